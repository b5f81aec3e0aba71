"""The Vagrant lab (vagrant/): everything that can be checked without booting VMs.

* ``vagrant validate`` on temporary copies of vagrant/ (it writes ``.vagrant/`` and
  VAGRANT_HOME), with the libvirt provider's checks when vagrant-libvirt is installed,
  and the smoke check's ``vagrant ssh`` command line against the real vagrant;
* the systemd units (``systemd-analyze verify`` in a scratch root) and their contract
  with provision.sh (env files, variables, executables);
* the scripts parse, and every overlayctl/overlayd flag they use is a real one;
* the VM recipe for real on two node namespaces: etcd and overlayd started with the
  units' command lines and provision.sh's environment files, provision.sh's own steps
  (network config, install-cni, readiness), then smoke-check.sh's host side through a
  stand-in for ``vagrant ssh``, attaching pods with the installed plugin exactly as a
  runtime would (``python -m overlay.lab.cni_exec``) and pinging across the VXLAN overlay;
* the smoke check's failure reports (no reply, MTU) with Debian's reference plugins;
* opt-in (OVERLAY_TEST_NSPAWN=1): the whole recipe on three booted Debian 12 containers
  with real systemd (vagrant/nspawn-lab.sh).

Booting the VMs needs nested virtualisation, which this machine does not have.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VAGRANT_DIR = ROOT / "vagrant"
UNITS = VAGRANT_DIR / "systemd"
PROVISION = VAGRANT_DIR / "provision.sh"
SMOKE = VAGRANT_DIR / "smoke-check.sh"
VENV_BIN = Path(sys.executable).parent
PREFIX = "ovvg"


def run(cmd, **kw):
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    kw.setdefault("timeout", 120)
    return subprocess.run(cmd, **kw)


# ---- vagrant validate ---------------------------------------------------------------

def vagrant_copy(tmp_path: Path) -> tuple[Path, dict]:
    """vagrant/ copied under a scratch repo root (the Vagrantfile syncs its parent)."""
    repo = tmp_path / "repo"
    shutil.copytree(VAGRANT_DIR, repo / "vagrant",
                    ignore=shutil.ignore_patterns(".vagrant", "__pycache__"))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("VAGRANT_", "OVERLAY_VAGRANT_"))}
    env["VAGRANT_HOME"] = str(tmp_path / "vagrant-home")
    env["VAGRANT_CHECKPOINT_DISABLE"] = "1"
    return repo / "vagrant", env


def libvirt_plugin_installed() -> bool:
    return any(Path("/usr/share/rubygems-integration/all/specifications").glob("vagrant-libvirt-*"))


needs_vagrant = pytest.mark.skipif(shutil.which("vagrant") is None,
                                   reason="vagrant is not installed (cmd/bootstrap.sh installs it)")


def vagrant_validate_all(tmp_path: Path, cases: dict[str, tuple[list[str], dict]]) -> dict:
    """Run ``vagrant validate ARGS`` for every case at once, each in its own copy."""
    procs = {}
    for name, (args, extra_env) in cases.items():
        cwd, env = vagrant_copy(tmp_path / name)
        procs[name] = subprocess.Popen(["vagrant", "validate", *args], cwd=cwd,
                                       env=dict(env, **extra_env), text=True,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    results = {}
    for name, p in procs.items():
        out, err = p.communicate(timeout=120)
        results[name] = subprocess.CompletedProcess(p.args, p.returncode, out, err)
    return results


@needs_vagrant
def test_vagrant_validate(tmp_path):
    had_state = (VAGRANT_DIR / ".vagrant").exists()
    # With vagrant-libvirt, the default settings are validated with the provider block's
    # settings too (which --ignore-provider skips).
    default = ([], {"VAGRANT_DEFAULT_PROVIDER": "libvirt"}) if libvirt_plugin_installed() \
        else (["--ignore-provider"], {})
    cases = {
        "default": default,
        # The seed's example network (fine with libvirt, if it is not the LAN), 2 VMs.
        "example-net": (["--ignore-provider"],
                        {"OVERLAY_VAGRANT_NET": "192.168.1", "OVERLAY_VAGRANT_NODES": "2"}),
        "bad-net": (["--ignore-provider"], {"OVERLAY_VAGRANT_NET": "192.168.300"}),
        "bad-nodes": (["--ignore-provider"], {"OVERLAY_VAGRANT_NODES": "zero"}),
    }
    r = vagrant_validate_all(tmp_path, cases)
    for name in ("default", "example-net"):
        assert r[name].returncode == 0, f"{name}: {r[name].stdout}{r[name].stderr}"
        assert "validated successfully" in r[name].stdout
    assert "node2" in r["example-net"].stdout and "node3" not in r["example-net"].stdout
    for name, var in (("bad-net", "OVERLAY_VAGRANT_NET"), ("bad-nodes", "OVERLAY_VAGRANT_NODES")):
        err = r[name].stderr
        assert r[name].returncode != 0
        assert f"{var}=" in err and "expected" in err, err  # one clear line
        assert "Traceback" not in err and ".rb:" not in err
    assert (VAGRANT_DIR / ".vagrant").exists() == had_state  # the copies, not the tree


@needs_vagrant
@pytest.mark.skipif(not libvirt_plugin_installed(), reason="vagrant-libvirt is not installed")
def test_smoke_check_speaks_vagrants_cli(tmp_path):
    """The host side's `vagrant ssh NODE --no-tty -c ...` is accepted by the real vagrant:
    with no VM created it gets as far as vagrant's own "create the VM first"."""
    cwd, env = vagrant_copy(tmp_path)
    r = run([str(cwd / "smoke-check.sh"), "node1"],
            env=dict(env, VAGRANT_DEFAULT_PROVIDER="libvirt"), timeout=60)
    assert r.returncode == 1
    assert "==> node1: pod attached through the CNI plugin ... FAILED" in r.stdout
    assert "VM must be created before running this command" in r.stderr, r.stderr
    assert "invalid option" not in r.stderr


def test_vagrantfile_contract():
    """The README's promises: Debian 12 box, 3 VMs at .11-.13, repo at /vagrant, etcd on node1."""
    text = (VAGRANT_DIR / "Vagrantfile").read_text()
    assert 'config.vm.box = "debian/bookworm64"' in text
    assert re.search(r'"OVERLAY_VAGRANT_NET", "192\.168\.56"', text)
    assert '"#{NET}.#{10 + i}"' in text and 'ETCD_IP = "#{NET}.11"' in text
    assert 'synced_folder REPO_ROOT, "/vagrant"' in text
    assert 'path: "provision.sh"' in text
    assert '"OVERLAY_RUN_ETCD" => (i == 1 ? "yes" : "no")' in text


# ---- systemd units -------------------------------------------------------------------

def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A systemd unit file as {section: {key: [values]}} (continuations joined)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            assert line.endswith("]"), f"{path.name}:{n}: bad section header {line!r}"
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{path.name}:{n}: key outside a section"
        key, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Za-z]+", key.strip()), f"{path.name}:{n}: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def provision_function(name: str, **env: str) -> str:
    """The output of one of provision.sh's functions (sourcing it provisions nothing)."""
    r = run(["bash", "-c", f'source "$1" && {name}', "provision", str(PROVISION)],
            env=dict(os.environ, **env), timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout


def env_file_vars(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines()
                if line.strip() and not line.startswith("#"))


def test_units_parse_and_match_provision():
    provision = PROVISION.read_text()
    ips = {"OVERLAY_NODE_IP": "192.168.56.12", "OVERLAY_ETCD_IP": "192.168.56.11"}
    for name in ("overlayd.service", "overlay-etcd.service"):
        unit = parse_unit(UNITS / name)
        assert set(unit) == {"Unit", "Service", "Install"}, name
        assert unit["Install"]["WantedBy"] == ["multi-user.target"]
        svc = unit["Service"]
        # provision.sh installs the unit under this name and writes its env file.
        assert f"install_unit {name}" in provision
        (env_file,) = svc["EnvironmentFile"]
        m = re.search(rf'write_env {re.escape(env_file)} "\$\((\w+)\)"', provision)
        assert m, f"provision.sh does not write {env_file}"
        written = env_file_vars(provision_function(m.group(1), **ips))
        for var in re.findall(r"\$\{(\w+)\}", svc["ExecStart"][0]):
            assert var in written, f"{name} uses ${{{var}}}, {env_file} lacks it"
    d = parse_unit(UNITS / "overlayd.service")["Service"]
    assert d["ExecStart"] == ["/usr/local/bin/overlayd"]
    assert 'ln -sfn "$REPO/cmd/$c" "/usr/local/bin/$c"' in provision
    linked = re.search(r"for c in ([^;]+);", provision)
    assert linked, "provision.sh links no commands"
    assert "overlayd" in linked.group(1).split()
    assert d["RuntimeDirectoryPreserve"] == ["yes"]  # subnet.env outlives a restart
    e = parse_unit(UNITS / "overlay-etcd.service")
    assert e["Unit"]["Conflicts"] == ["etcd.service"] and e["Service"]["User"] == ["etcd"]
    assert "--listen-client-urls http://${OVERLAY_ETCD_IP}:2379" in e["Service"]["ExecStart"][0]


def need_tool(name: str) -> None:
    """A tool that ``cmd/bootstrap.sh --test`` installs is a failure when missing, not a skip."""
    assert shutil.which(name), f"{name} is not installed: run cmd/bootstrap.sh --test"


def test_units_systemd_analyze_verify(tmp_path):
    """systemd's own parser, in a scratch root holding the units and their executables."""
    need_tool("systemd-analyze")
    root = tmp_path / "root"
    shutil.copytree("/lib/systemd/system", root / "lib/systemd/system", symlinks=True)
    units = root / "etc/systemd/system"
    units.mkdir(parents=True)
    for unit in UNITS.glob("*.service"):
        shutil.copy(unit, units)
        for exe in parse_unit(unit)["Service"]["ExecStart"]:
            path = root / shlex.split(exe)[0].lstrip("/")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("#!/bin/sh\n")
            path.chmod(0o755)
    names = sorted(u.name for u in UNITS.glob("*.service"))
    r = run(["systemd-analyze", "verify", f"--root={root}", *names])
    # verify exits 0 on unknown keys and bad values: any message is a finding.
    assert r.returncode == 0 and not (r.stdout + r.stderr).strip(), r.stdout + r.stderr


# ---- scripts --------------------------------------------------------------------------

def test_scripts_parse():
    for script in (PROVISION, SMOKE, VAGRANT_DIR / "nspawn-lab.sh"):
        assert os.access(script, os.X_OK), f"{script} not executable"
        r = run(["bash", "-n", str(script)])
        assert r.returncode == 0, r.stderr
    # smoke-check.sh runs the CNI runtime as a module of the venv's python.
    r = run([sys.executable, "-m", "overlay.lab.cni_exec", "--help"])
    assert r.returncode == 0 and "--cache-dir" in r.stdout, r.stderr


def test_scripts_shellcheck():
    need_tool("shellcheck")
    scripts = sorted(str(p) for p in VAGRANT_DIR.glob("*.sh"))
    r = run(["shellcheck", "-S", "warning", *scripts], timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_provision_rejects_bad_input(tmp_path):
    """Bad input stops provision.sh with one clear line before it changes anything."""
    # A scratch repo whose bootstrap.sh stops the script at once, should a check let bad
    # input through: the test must never provision this machine.
    (tmp_path / "cmd").mkdir()
    (tmp_path / "cmd/bootstrap.sh").write_text("#!/bin/sh\nexit 99\n")
    (tmp_path / "cmd/bootstrap.sh").chmod(0o755)
    base = dict(os.environ, OVERLAY_REPO=str(tmp_path), OVERLAY_NODE_IP="192.168.56.12",
                OVERLAY_ETCD_IP="192.168.56.11", OVERLAY_RUN_ETCD="no")
    for var, value, needle in (("OVERLAY_NODE_IP", "192.168.56", "OVERLAY_NODE_IP"),
                               ("OVERLAY_ETCD_IP", "", "OVERLAY_ETCD_IP"),
                               ("OVERLAY_RUN_ETCD", "maybe", "OVERLAY_RUN_ETCD"),
                               ("OVERLAY_NODE_IP", "192.0.2.77", "no interface holds 192.0.2.77")):
        r = run(["bash", str(PROVISION)], env=dict(base, **{var: value}), timeout=30)
        assert r.returncode == 1, (var, value, r.stdout, r.stderr)
        assert needle in r.stderr and r.stderr.startswith("error:"), r.stderr
        assert "==>" not in r.stdout  # nothing was done


def test_cni_runtime_reports_plugin_errors(tmp_path):
    """A conflist naming a missing plugin, or a plugin failing: one line, exit 1."""
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "10-x.conflist").write_text(json.dumps(
        {"cniVersion": "1.0.0", "name": "x", "plugins": [{"type": "ovvg-missing"}]}))
    base = [sys.executable, "-m", "overlay.lab.cni_exec", "add", "--netns",
            "/run/netns/ovvg-none", "--container-id", "ovvg-c1", "--conf-dir", str(conf),
            "--cache-dir", str(tmp_path / "cache")]
    r = run([*base, "--cni-path", str(tmp_path)], timeout=30)
    assert r.returncode == 1
    assert f"error: CNI plugin 'ovvg-missing' not found on CNI_PATH {tmp_path}" in r.stderr
    # A plugin refusing the request: its CNI error JSON is passed on, and the runtime
    # cleans up with DEL. (A stand-in: Debian's bridge plugin would create cni0 in this
    # namespace before it even looks at CNI_NETNS.)
    plugin = tmp_path / "ovvg-refuses"
    plugin.write_text('#!/bin/sh\necho "$CNI_COMMAND" >>"$0.log"\n'
                      '[ "$CNI_COMMAND" = DEL ] && exit 0\n'
                      'echo \'{"cniVersion": "1.0.0", "code": 7, "msg": "bad config"}\'; exit 1\n')
    plugin.chmod(0o755)
    (conf / "10-x.conflist").write_text(json.dumps(
        {"cniVersion": "1.0.0", "name": "x", "plugins": [{"type": "ovvg-refuses"}]}))
    r = run([*base, "--cni-path", str(tmp_path)], timeout=30)
    assert r.returncode == 1, r.stderr
    assert ('error: CNI ADD ovvg-refuses for ovvg-c1 failed: {"cniVersion": "1.0.0", "code": 7'
            in r.stderr)
    assert (tmp_path / "ovvg-refuses.log").read_text().split() == ["ADD", "DEL"]
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").iterdir())
    r = run([*base[:-4], "--conf-dir", str(tmp_path / "nope")], timeout=30)
    assert r.returncode == 1 and "does not exist (was install-cni run?)" in r.stderr


def shell_commands(text: str, program: str) -> list[list[str]]:
    """Every invocation of PROGRAM in a shell script, as argv with $VARS made placeholders."""
    text = re.sub(r"\\\n\s*", " ", text)
    found = []
    for m in re.finditer(rf"(?:^\s*|\bif\s+|!\s+|\bsudo\s+|\$\()({program}\b[^\n]*)", text, re.M):
        line = re.split(r"\s+[0-9]?>|\s*(?:\|\||&&|\||;)|\)", m.group(1))[0]
        argv = shlex.split(line)
        found.append([re.sub(r"\$\{?\w+\}?", "X", a) for a in argv])
    return found


def test_overlayctl_flags_are_real():
    """Each overlayctl command line in the scripts parses (unknown options fail, --help exits 0)."""
    overlayctl = VENV_BIN / "overlayctl"
    if not overlayctl.exists():
        pytest.skip(f"{overlayctl} not installed (run cmd/bootstrap.sh)")
    commands = shell_commands(PROVISION.read_text() + SMOKE.read_text(), "overlayctl")
    subcommands = {" ".join(a for a in argv[1:] if not a.startswith("-") and a != "X")
                   for argv in commands}
    assert {"config set", "config get", "install-cni", "leases list"} <= subcommands, subcommands
    for argv in commands:
        r = run([str(overlayctl), *argv[1:], "--help"], timeout=60)
        assert r.returncode == 0, f"{shlex.join(argv)}: {r.stderr}"
        assert r.stdout.startswith("Usage: overlayctl")


def test_overlayd_env_names_are_real_flags():
    """Every OVERLAYD_* variable provision.sh writes names a flag overlayd really has."""
    overlayd = VENV_BIN / "overlayd"
    r = run([str(overlayd), "--help"], timeout=60) if overlayd.exists() else None
    if r is None or r.returncode != 0:
        pytest.skip("overlayd is not installed or has no --help yet")
    names = set(env_file_vars(provision_function("overlayd_env", OVERLAY_NODE_IP="192.168.56.12",
                                                 OVERLAY_ETCD_IP="192.168.56.11")))
    assert {"OVERLAYD_ETCD_ENDPOINTS", "OVERLAYD_PUBLIC_IP", "OVERLAYD_HEALTHZ_ADDR",
            "OVERLAYD_CNI_BIN_DIR"} <= names
    flags = set(re.findall(r"(--[a-z0-9-]+)", r.stdout))
    for name in names:
        flag = "--" + name.removeprefix("OVERLAYD_").lower().replace("_", "-")
        assert flag in flags, f"{name}: overlayd has no {flag} (flags: {sorted(flags)})"
    # The readiness URL provision.sh polls is the one the daemon serves.
    assert "/readyz" in PROVISION.read_text()


# ---- the smoke check, for real, on two node namespaces ------------------------------
#
# Each "VM" is a node namespace ovvg-nodeN; a veth pair between them is the private
# network, and each routes the other's pod subnet (the overlay's job in the real lab: this
# tests the smoke check, not the daemon). A stand-in for `vagrant ssh NODE --no-tty -c
# CMD` runs CMD with the node's settings: the CNI plugin executes inside the node's
# namespace, the pods are namespaces ovvg-nodeN-pod.

NODES = {"node1": ("192.168.56.11", "10.244.1"), "node2": ("192.168.56.12", "10.244.2")}

FAKE_VAGRANT = """#!/bin/bash
# Stand-in for `vagrant ssh NODE --no-tty -c CMD` (tests/integration/test_vagrant.py).
set -eu
if [ $# -ne 5 ] || [ "$1" != ssh ] || [ "$3" != --no-tty ] || [ "$4" != -c ]; then
  echo "fake vagrant: unexpected arguments: $*" >&2; exit 2
fi
node=$2
[ -e "/run/netns/{prefix}-$node" ] || {{
  echo "The machine with the name '$node' was not found" >&2; exit 1; }}
export OVERLAY_SMOKE_NODE_NETNS={prefix}-$node OVERLAY_SMOKE_PREFIX={prefix}-$node
export OVERLAY_SMOKE_CONF_DIR={tmp}/$node/conf OVERLAY_SMOKE_STATE_DIR={tmp}/$node/state
export OVERLAY_SMOKE_CNI_PATH={cni_path} OVERLAY_CNI_SOCKET={tmp}/$node/cni.sock
sudo() {{ "$@"; }}
export -f sudo
exec bash -c "$5"
"""


def sh(*args: str) -> None:
    r = run(list(args), timeout=30)
    assert r.returncode == 0, f"{shlex.join(args)}: {r.stderr}"


def make_nodes(routes: bool) -> list[str]:
    """Node namespaces joined by a veth pair; with ``routes``, each routes the other's pods."""
    remove_nodes([f"{PREFIX}-{n}" for n in NODES])  # left over by a killed run: our names only
    made = []
    try:
        for node in NODES:
            ns = f"{PREFIX}-{node}"
            sh("ip", "netns", "add", ns)
            made.append(ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "netns", "exec", ns, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
        n1, n2 = made
        # Created inside node1 with its peer in node2: never in the host's namespace.
        sh("ip", "-n", n1, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0",
           "netns", n2)
        for ns, (addr, _), (peer, peer_pods) in zip(made, NODES.values(),
                                                    reversed(NODES.values()), strict=True):
            sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            if routes:
                sh("ip", "-n", ns, "route", "add", f"{peer_pods}.0/24", "via", peer)
    except BaseException:
        remove_nodes(made)
        raise
    return made


def remove_nodes(made: list[str]) -> None:
    for ns in [f"{PREFIX}-{n}-pod" for n in NODES] + made:
        if os.path.exists(f"/run/netns/{ns}"):
            run(["ip", "netns", "del", ns])


@pytest.fixture
def two_nodes():
    made = make_nodes(routes=True)
    try:
        yield made
    finally:
        remove_nodes(made)


def reference_conflist(tmp: Path, node: str) -> dict:
    """bridge + host-local chained with portmap: Debian's reference plugins."""
    pod_net = NODES[node][1]
    return {"cniVersion": "1.0.0", "name": "overlay", "plugins": [
        {"type": "bridge", "bridge": "cni0", "isGateway": True, "isDefaultGateway": True,
         "mtu": 1450, "ipam": {"type": "host-local", "subnet": f"{pod_net}.0/24",
                               "dataDir": str(tmp / node / "ipam")}},
        {"type": "portmap", "capabilities": {"portMappings": True}}]}


def overlay_conflist(tmp: Path, node: str) -> dict:
    """What provision.sh's install_cni (`overlayctl install-cni`) writes, pointed at this
    node's subnet.env (written by its overlayd) and IPAM dir."""
    conf_dir = tmp / node / "installed"
    out = provision_step(f"{PREFIX}-{node}", "install_cni",
                         {"OVERLAY_CNI_BIN_DIR": str(tmp / "bin"),
                              "OVERLAY_CNI_CONF_DIR": str(conf_dir)})
    assert "installing the CNI plugin" in out
    # Debian's portmap, which the conflist chains, linked where runtimes look.
    assert (tmp / "bin/portmap").resolve() == Path("/usr/lib/cni/portmap")
    (conflist,) = conf_dir.glob("*.conflist")
    conf = json.loads(conflist.read_text())
    (plugin,) = [p for p in conf["plugins"] if p["type"] == "overlay"]
    plugin["subnetFile"] = str(tmp / node / "subnet.env")
    plugin["dataDir"] = str(tmp / node / "ipam")
    return conf


def make_smoke_env(tmp_path: Path, plugin: str) -> dict:
    """The environment for smoke-check.sh's host side, the CNI conf dirs written per node."""
    for node in NODES:
        if plugin == "reference":
            conf = reference_conflist(tmp_path, node)
        else:
            conf = overlay_conflist(tmp_path, node)
        (tmp_path / node / "conf").mkdir(parents=True)
        (tmp_path / node / "conf" / "10-overlay.conflist").write_text(json.dumps(conf))
    fake = tmp_path / "vagrant"
    fake.write_text(FAKE_VAGRANT.format(prefix=PREFIX, tmp=tmp_path,
                                        cni_path=f"{tmp_path / 'bin'}:/usr/lib/cni"))
    fake.chmod(0o755)
    # The plugin talks to its node's daemon (tmp/NODE/cni.sock) when there is one, else
    # runs in-process; never to a socket outside this test.
    return dict(os.environ, VAGRANT=str(fake), OVERLAY_SMOKE_REMOTE=str(SMOKE),
                OVERLAY_VAGRANT_NODES="2", OVERLAY_SMOKE_PING_WAIT="1")


@pytest.fixture
def smoke_env_reference(tmp_path, two_nodes):
    """The script's own logic, with Debian's reference plugins attaching the pods (our
    plugin and daemon do it in test_vm_recipe_end_to_end)."""
    return make_smoke_env(tmp_path, "reference")


def assert_nothing_left(tmp: Path) -> None:
    for node in NODES:
        assert not os.path.exists(f"/run/netns/{PREFIX}-{node}-pod")
        ipam = tmp / node / "ipam" / "overlay"
        leftover = [p.name for p in ipam.iterdir() if p.name[0].isdigit()] if ipam.exists() else []
        assert leftover == [], f"{node}: IPs still reserved: {leftover}"
        assert list((tmp / node / "state").glob("*.json")) == []


def assert_smoke_passed(r: subprocess.CompletedProcess, pod_nets: dict[str, str]) -> None:
    """Both pods attached with an IP from their node's subnet, both directions ok."""
    assert r.returncode == 0, r.stdout + r.stderr
    ips = {n: re.search(rf"==> {n}: pod attached through the CNI plugin \.\.\. "
                        rf"({re.escape(net)}\d+)$", r.stdout, re.M) for n, net in pod_nets.items()}
    matches = [m for m in ips.values() if m is not None]
    assert len(matches) == len(ips), r.stdout
    a, b = (m.group(1) for m in matches)
    lines = r.stdout.splitlines()
    for src, dst in ((f"node1 pod {a}", f"node2 pod {b}"), (f"node2 pod {b}", f"node1 pod {a}")):
        assert any(re.fullmatch(rf"\s+{re.escape(src)}\s+-> {re.escape(dst)}\s+ok", line)
                   for line in lines), r.stdout
    assert "smoke check passed: 2 pods on 2 VMs reach each other" in r.stdout


def test_smoke_check_fails_when_pods_cannot_reach(smoke_env_reference, tmp_path):
    # node2 loses its route to node1's pods: node1's pings get no reply, node2's neither.
    sh("ip", "-n", f"{PREFIX}-node2", "route", "del", f"{NODES['node1'][1]}.0/24")
    r = run([str(SMOKE)], env=smoke_env_reference, timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr
    assert re.search(r"node1 pod \S+\s+-> node2 pod \S+\s+FAIL \(no reply\)", r.stdout), r.stdout
    assert "smoke check FAILED" in r.stderr
    assert_nothing_left(tmp_path)


def test_smoke_check_names_an_mtu_problem(smoke_env_reference, tmp_path):
    # A smaller underlay MTU than the pods': full-size packets with DF set are dropped.
    sh("ip", "-n", f"{PREFIX}-node1", "link", "set", "eth0", "mtu", "1400")
    r = run([str(SMOKE), "node1", "node2"], env=smoke_env_reference, timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "1422-byte payload with DF lost: MTU" in r.stdout, r.stdout
    assert_nothing_left(tmp_path)


# ---- the whole VM recipe on two node namespaces --------------------------------------
#
# What `vagrant up` does on each VM, minus the VM and systemd: node1 runs etcd with the
# command line of overlay-etcd.service, provision.sh's own set_network_config writes the
# network config, each node runs overlayd with the command line of overlayd.service and
# the environment file provision.sh writes, install-cni installs the plugin, and
# provision.sh's wait_http waits for /readyz. Then the smoke check pings pod to pod over
# the real VXLAN overlay.

def unit_command(unit: str, env: dict[str, str]) -> list[str]:
    """ExecStart of a unit with ${VAR} expanded from its environment, as systemd does."""
    (line,) = parse_unit(UNITS / unit)["Service"]["ExecStart"]
    return shlex.split(re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], line))


def provision_step(ns: str, step: str, env: dict[str, str], timeout: float = 60) -> str:
    """Run one of provision.sh's functions inside a node namespace."""
    path = f"{VENV_BIN}:{os.environ['PATH']}"
    r = run(["ip", "netns", "exec", ns, "bash", "-c", f'source "$1" && {step}', "provision",
             str(PROVISION)], env=dict(os.environ, PATH=path, **env), timeout=timeout)
    assert r.returncode == 0, f"{step}: {r.stdout}{r.stderr}"
    return r.stdout


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


@pytest.mark.slow
def test_vm_recipe_end_to_end(tmp_path):
    if run([str(VENV_BIN / "overlayctl"), "install-cni", "--help"]).returncode != 0:
        pytest.skip("overlayctl install-cni is not there yet")
    made = make_nodes(routes=False)  # the overlay routes between the nodes now
    procs: list[subprocess.Popen] = []
    try:
        (n1_ip, _), (n2_ip, _) = NODES.values()
        etcd_ip = n1_ip
        ns1 = made[0]
        etcd_env = env_file_vars(provision_function("etcd_env", OVERLAY_ETCD_IP=etcd_ip,
                                                    OVERLAY_NODE_IP=n1_ip))
        argv = unit_command("overlay-etcd.service", etcd_env)
        argv[argv.index("--data-dir") + 1] = str(tmp_path / "etcd")  # StateDirectory=
        with open(tmp_path / "etcd.log", "w") as log:
            procs.append(subprocess.Popen(["ip", "netns", "exec", ns1, *argv], stdout=log,
                                          stderr=subprocess.STDOUT))
        step_env = {"OVERLAY_ETCD_IP": etcd_ip, "OVERLAY_NODE_IP": n1_ip,
                        "OVERLAY_POD_NETWORK": "10.244.0.0/16", "OVERLAY_ETCD_WAIT": "30"}
        provision_step(ns1, "wait_etcd", step_env)
        out = provision_step(ns1, "set_network_config", step_env)
        assert "writing the network config: 10.244.0.0/16" in out

        for ns, node, (node_ip, _) in zip(made, NODES, NODES.values(), strict=True):
            env = env_file_vars(provision_function("overlayd_env", OVERLAY_ETCD_IP=etcd_ip,
                                                   OVERLAY_NODE_IP=node_ip))
            # Two daemons on one host: their files and node names apart (the VMs use the
            # defaults; each VM's hostname is its node name).
            env.update(OVERLAYD_NODE_NAME=node,
                       OVERLAYD_SUBNET_FILE=str(tmp_path / node / "subnet.env"),
                       OVERLAYD_STATE_DIR=str(tmp_path / node / "state-overlayd"),
                       OVERLAYD_CNI_SOCKET=str(tmp_path / node / "cni.sock"),
                       OVERLAYD_RUNTIME_FILE=str(tmp_path / node / "overlayd.json"))
            (tmp_path / node).mkdir(exist_ok=True)
            (exe,) = unit_command("overlayd.service", env)
            assert exe == "/usr/local/bin/overlayd"  # provision.sh links it to cmd/overlayd
            with open(tmp_path / node / "overlayd.log", "w") as log:
                procs.append(subprocess.Popen(
                    ["ip", "netns", "exec", ns, str(ROOT / "cmd/overlayd")],
                    env={k: v for k, v in os.environ.items()
                         if not k.startswith("OVERLAYD_")} | env,
                    stdout=log, stderr=subprocess.STDOUT))
        for ns in made:
            provision_step(ns, "wait_http http://127.0.0.1:9471/readyz 30", {})
        env = make_smoke_env(tmp_path, "overlay")
        r = run([str(SMOKE)], env=env, timeout=120)
        logs = "".join((tmp_path / n / "overlayd.log").read_text() for n in NODES)
        assert r.returncode == 0, r.stdout + r.stderr + logs
        # Each pod's IP is in the subnet its node's overlayd leased.
        pod_nets = {}
        for node in NODES:
            subnet = env_file_vars((tmp_path / node / "subnet.env").read_text())["OVERLAY_SUBNET"]
            pod_nets[node] = subnet.rsplit(".", 1)[0] + "."
        assert len(set(pod_nets.values())) == 2, pod_nets
        assert_smoke_passed(r, pod_nets)
        assert_nothing_left(tmp_path)
        assert all(p.poll() is None for p in procs), logs
    finally:
        stop(procs)
        remove_nodes(made)


# ---- opt-in: the recipe on booted Debian 12 containers (real systemd) ----------------

@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("OVERLAY_TEST_NSPAWN") != "1",
                    reason="opt-in (OVERLAY_TEST_NSPAWN=1): builds a Debian image with apt and "
                           "pip (minutes, network), then boots 3 systemd-nspawn nodes")
def test_nspawn_lab_all():
    r = run([str(VAGRANT_DIR / "nspawn-lab.sh"), "all"], timeout=1800)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "smoke check passed: 3 pods on 3 VMs reach each other" in r.stdout
    assert not any(os.path.exists(f"/run/netns/ovnspawn-{n}") for n in
                   ("underlay", "node1", "node2", "node3"))
