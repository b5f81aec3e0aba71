"""Interop with real tools: chained with the reference portmap plugin, and podman as the
container runtime calling the installed plugin through its conflist."""

import glob
import json
import os
import shutil
import subprocess
import tempfile
import textwrap
import time

import pytest

from overlay.cni.install import install_cni

from .support.cni_node import CNINode, sh

pytestmark = pytest.mark.integration

PORTMAP = "/usr/lib/cni/portmap"


@pytest.fixture
def node(tmp_path):
    n = CNINode(tmp_path)
    try:
        yield n
    finally:
        n.close()


def run_portmap(node, command, container_id, pod, conf):
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": container_id, "CNI_IFNAME": "eth0",
           "CNI_NETNS": f"/var/run/netns/{pod}", "CNI_PATH": "/usr/lib/cni",
           "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")}
    return subprocess.run(["ip", "netns", "exec", node.name, PORTMAP], env=env,
                          input=json.dumps(conf).encode(), capture_output=True, timeout=60)


def tcp_echo_server(pod, port):
    """A one-shot TCP server in the pod that answers 'hello from <pod>'."""
    code = textwrap.dedent(f"""
        import socket, sys
        s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", {port})); s.listen(1); s.settimeout(30)
        print("ready", flush=True)
        c, _ = s.accept(); c.sendall(b"hello from {pod}"); c.close()
    """)
    proc = subprocess.Popen(["ip", "netns", "exec", pod, "python3", "-c", code],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None  # both piped above
    assert proc.stdout.readline().strip() == b"ready", proc.stderr.read()
    return proc


def tcp_read_from(netns, host, port):
    code = (f"import socket; s = socket.create_connection(({host!r}, {port}), timeout=5); "
            "print(s.recv(100).decode())")
    return sh("ip", "netns", "exec", netns, "python3", "-c", code).stdout.strip()


@pytest.mark.skipif(not os.access(PORTMAP, os.X_OK), reason="reference portmap plugin missing")
def test_chained_with_portmap_a_port_mapping_works(node):
    pod = node.pod()
    conf = node.conf(cniVersion="1.0.0")
    result = node.add("pm1", pod, conf=conf)
    pm_conf = {"cniVersion": "1.0.0", "name": conf["name"], "type": "portmap",
               "capabilities": {"portMappings": True}, "snat": True,
               "runtimeConfig": {"portMappings": [
                   {"hostPort": 18080, "containerPort": 8080, "protocol": "tcp"}]},
               "prevResult": result}
    added = run_portmap(node, "ADD", "pm1", pod, pm_conf)
    assert added.returncode == 0, added.stdout + added.stderr
    # portmap passes our result through, as a chained plugin must
    assert json.loads(added.stdout)["ips"] == result["ips"]
    server = tcp_echo_server(pod, 8080)
    try:
        # the node connects to its own address on the host port: DNAT to the pod
        assert tcp_read_from(node.name, "10.88.1.1", 18080) == f"hello from {pod}"
    finally:
        server.kill()
        server.wait()
    # (portmap 1.1.1's own CHECK is not exercised: it fails looking for an IPv6 chain it
    # never made when the result holds only IPv4 addresses.)
    deleted = run_portmap(node, "DEL", "pm1", pod, pm_conf)
    assert deleted.returncode == 0, deleted.stdout
    assert node.cni("DEL", "pm1", pod, conf=conf).rc == 0
    nat = sh("ip", "netns", "exec", node.name, "iptables", "-t", "nat", "-S").stdout
    assert "18080" not in nat
    assert node.ip_files() == []


# --- podman ----------------------------------------------------------------------------

CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{dir}/events.log"
[network]
network_backend = "cni"
network_config_dir = "{dir}/net.d"
cni_plugin_dirs = ["{dir}/bin", "/usr/lib/cni"]
default_network = "{network}"
"""


class Podman:
    """podman with its own root, runroot, tmpdir, runc root and CNI dirs under ``dir``,
    run inside the node's network namespace (nsenter --net: ``ip netns exec`` would
    remount /sys and hide the cgroup mounts runc needs)."""

    def __init__(self, node, directory):
        self.node = node
        self.dir = directory
        self.network = f"ovcni-pm-{node.tag}"
        for sub in ("root", "runroot", "tmp", "runc", "net.d", "bin", "rootfs/bin",
                    "rootfs/usr/bin", "rootfs/tmp", "rootfs/www"):
            os.makedirs(os.path.join(directory, sub), exist_ok=True)
        with open(os.path.join(directory, "containers.conf"), "w") as f:
            f.write(CONTAINERS_CONF.format(dir=directory, network=self.network))
        install_cni(os.path.join(directory, "bin"), os.path.join(directory, "unused-conf"))
        conflist = {"cniVersion": "1.0.0", "name": self.network, "plugins": [
            node.conf(cniVersion=None, name=None, subnet="10.86.1.0/24", network="10.86.0.0/16",
                      dataDir=os.path.join(directory, "ipam")),
            {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True}]}
        with open(os.path.join(directory, "net.d", f"{self.network}.conflist"), "w") as f:
            json.dump(conflist, f)

    def __call__(self, *args, check=True, timeout=120):
        cmd = ["nsenter", f"--net=/var/run/netns/{self.node.name}", "podman",
               "--root", f"{self.dir}/root", "--runroot", f"{self.dir}/runroot",
               "--tmpdir", f"{self.dir}/tmp", "--storage-driver", "vfs",
               "--runtime-flag", f"root={self.dir}/runc", *args]
        env = dict(os.environ, CONTAINERS_CONF=f"{self.dir}/containers.conf",
                   OVERLAY_CNI_SOCKET=self.node.sock)
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)}: {proc.stderr.strip()[-2000:]}")
        return proc

    def import_busybox(self, image):
        rootfs = os.path.join(self.dir, "rootfs")
        shutil.copy("/bin/busybox", os.path.join(rootfs, "bin", "busybox"))
        os.symlink("/bin/busybox", os.path.join(rootfs, "usr", "bin", "busybox"))
        sh("/bin/busybox", "--install", "-s", os.path.join(rootfs, "bin"))
        with open(os.path.join(rootfs, "www", "index.html"), "w") as f:
            f.write("hello-from-c1\n")
        tar = subprocess.run(["tar", "-C", rootfs, "-c", "."], capture_output=True, check=True)
        cmd = ["podman", "--root", f"{self.dir}/root", "--runroot", f"{self.dir}/runroot",
               "--tmpdir", f"{self.dir}/tmp", "--storage-driver", "vfs", "import", "-", image]
        env = dict(os.environ, CONTAINERS_CONF=f"{self.dir}/containers.conf")
        proc = subprocess.run(cmd, input=tar.stdout, env=env, capture_output=True, timeout=120)
        assert proc.returncode == 0, proc.stderr


@pytest.mark.slow
@pytest.mark.skipif(not (shutil.which("podman") and shutil.which("runc")
                         and os.access("/bin/busybox", os.X_OK) and shutil.which("nsenter")),
                    reason="needs podman, runc, busybox-static and nsenter")
def test_podman_runs_two_containers_that_reach_each_other(node):
    # podman refuses a runroot longer than 50 characters: tmp_path is too long
    podman = Podman(node, tempfile.mkdtemp(prefix="ovcni-pm-", dir="/tmp"))
    image = f"localhost/ovcni-busybox:{node.tag}"
    names = [f"ovcni-c1-{node.tag}", f"ovcni-c2-{node.tag}"]
    podman.import_busybox(image)
    try:
        podman("run", "-d", "--name", names[0], "--network", podman.network,
               "-p", "18081:8080", image, "httpd", "-f", "-p", "8080", "-h", "/www")
        podman("run", "-d", "--name", names[1], "--network", podman.network, image,
               "sleep", "300")
        ips = []
        for name in names:
            out = podman("exec", name, "ip", "-4", "-o", "addr", "show", "eth0").stdout
            ips.append(out.split()[3].split("/")[0])
        assert all(ip.startswith("10.86.1.") for ip in ips) and ips[0] != ips[1]
        # the reservations are ours, on host-local's layout
        files = sorted(os.listdir(os.path.join(podman.dir, "ipam", podman.network)))
        assert sorted(ips) == sorted(f for f in files if f[0].isdigit() and "." in f
                                     and f != "last_reserved_ip.0")
        # c2 reaches c1 directly over the bridge
        podman("exec", names[1], "ping", "-c1", "-W2", ips[0])
        page = podman("exec", names[1], "wget", "-q", "-O", "-", f"http://{ips[0]}:8080/").stdout
        assert page.strip() == "hello-from-c1"
        # -p went through the chained portmap plugin: the node's gateway address forwards
        assert _http_get_in(node.name, "10.86.1.1", 18081) == "hello-from-c1"
        # the warm server handled podman's calls (fd passing across mount namespaces)
        assert "CNI ADD" in node.server_log()
    finally:
        podman("rm", "-f", "-t", "0", *names, check=False)
        podman("rmi", "-f", image, check=False)
        ipam_dir = os.path.join(podman.dir, "ipam", podman.network)
        leftovers = [f for f in os.listdir(ipam_dir) if f[0].isdigit()
                     and f != "last_reserved_ip.0"] if os.path.isdir(ipam_dir) else []
        _clean_podman_leftovers(podman)
    assert leftovers == []
    node.wait_for(lambda: node.veths() == [], what="podman's veths removed")


def _http_get_in(netns, host, port):
    code = (f"import urllib.request; print(urllib.request.urlopen('http://{host}:{port}/', "
            "timeout=5).read().decode())")
    deadline = time.monotonic() + 10
    while True:
        proc = sh("ip", "netns", "exec", netns, "python3", "-c", code, check=False)
        if proc.returncode == 0 or time.monotonic() > deadline:
            assert proc.returncode == 0, proc.stderr
            return proc.stdout.strip()
        time.sleep(0.2)


def _clean_podman_leftovers(podman):
    """libcni's result cache for our network only; everything else podman made lives under
    podman.dir (root, runroot, runc state) and goes with tmp_path."""
    for path in glob.glob(f"/var/lib/cni/results/{podman.network}-*"):
        os.unlink(path)
    shutil.rmtree(podman.dir, ignore_errors=True)
