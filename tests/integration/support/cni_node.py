"""A throwaway CNI "node" for integration tests: a network namespace ``ovcni-node-<tag>``
running the warm server, pods as namespaces ``ovcni-pod-<tag>-<n>``, and the plugin
executed exactly as a runtime would (``cni-plugin/overlay`` inside the node namespace).

Nothing is created in the host's namespace; ``close()`` removes exactly what was made
(the bridge, veths and nat rules live in the node namespace and go with it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
ENTRY = os.path.join(ROOT, "cni-plugin", "overlay")
PY = sys.executable


def sh(*args: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed: {proc.stderr.strip()}")
    return proc


class CNIResult:
    def __init__(self, proc: subprocess.CompletedProcess):
        self.rc = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        self.doc = json.loads(proc.stdout) if proc.stdout.strip() else None

    @property
    def code(self) -> int | None:
        return self.doc.get("code") if self.doc and self.rc else None

    def __repr__(self) -> str:
        return f"CNIResult(rc={self.rc}, stdout={self.stdout!r}, stderr={self.stderr[-500:]!r})"


class CNINode:
    def __init__(self, tmp_path, warm: bool = True, tag: str | None = None):
        self.tag = tag or uuid.uuid4().hex[:6]
        self.name = f"ovcni-node-{self.tag}"
        self.dir = str(tmp_path)
        self.data_dir = os.path.join(self.dir, "ipam")
        self.sock = os.path.join(self.dir, "cni.sock")
        self.pods: list[str] = []
        self.server: subprocess.Popen | None = None
        sh("ip", "netns", "add", self.name)
        sh("ip", "-n", self.name, "link", "set", "lo", "up")
        if warm:
            self.start_server()

    # --- lifecycle --------------------------------------------------------------------
    def start_server(self) -> None:
        log = open(os.path.join(self.dir, "server.log"), "ab")  # noqa: SIM115 (a child's log: open while the child runs)
        self.server = subprocess.Popen(
            ["ip", "netns", "exec", self.name, PY, "-m", "overlay.cni.plugin", "serve",
             "--socket", self.sock, "-v"], stdout=log, stderr=log, cwd=ROOT)
        deadline = time.monotonic() + 30
        while not os.path.exists(self.sock):
            assert self.server.poll() is None, self.server_log()
            assert time.monotonic() < deadline, "warm server did not start"
            time.sleep(0.02)

    def stop_server(self) -> None:
        if self.server is not None:
            self.server.terminate()
            self.server.wait(30)
            self.server = None

    def server_log(self) -> str:
        try:
            with open(os.path.join(self.dir, "server.log"), errors="replace") as f:
                return f.read()[-4000:]
        except FileNotFoundError:
            return ""

    def close(self) -> None:
        self.stop_server()
        for pod in self.pods:
            sh("ip", "netns", "del", pod, check=False)
        sh("ip", "netns", "del", self.name, check=False)

    # --- pods and config --------------------------------------------------------------
    def pod(self) -> str:
        name = f"ovcni-pod-{self.tag}-{len(self.pods)}"
        sh("ip", "netns", "add", name)
        self.pods.append(name)
        return name

    def drop_pod(self, name: str) -> None:
        sh("ip", "netns", "del", name)
        self.pods.remove(name)

    def conf(self, **overrides) -> dict:
        conf = {"cniVersion": "1.1.0", "name": f"ovcni-{self.tag}", "type": "overlay",
                "bridge": "cni0", "subnet": "10.88.1.0/24", "network": "10.88.0.0/16",
                "mtu": 1400, "dataDir": self.data_dir, "hairpinMode": True,
                "isDefaultGateway": True}
        conf.update(overrides)
        return {k: v for k, v in conf.items() if v is not None}

    # --- running the plugin -----------------------------------------------------------
    def cni(self, command: str, container_id: str | None = None, pod: str | None = None,
            ifname: str | None = "eth0", conf: dict | None = None, warm: bool = True,
            stdin: bytes | None = None, env: dict | None = None,
            netns_path: str | None = None) -> CNIResult:
        full = {"CNI_COMMAND": command, "CNI_PATH": "/usr/lib/cni",
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "OVERLAY_CNI_SOCKET": self.sock if warm else os.path.join(self.dir, "absent")}
        if container_id is not None:
            full["CNI_CONTAINERID"] = container_id
        if ifname is not None:
            full["CNI_IFNAME"] = ifname
        if netns_path is not None:
            full["CNI_NETNS"] = netns_path
        elif pod is not None:
            full["CNI_NETNS"] = f"/var/run/netns/{pod}"
        full.update(env or {})
        data = stdin if stdin is not None else json.dumps(conf or self.conf()).encode()
        proc = subprocess.run(["ip", "netns", "exec", self.name, PY, "-IS", ENTRY], input=data,
                              env=full, capture_output=True, timeout=120)
        return CNIResult(subprocess.CompletedProcess(proc.args, proc.returncode,
                                                     proc.stdout.decode(), proc.stderr.decode()))

    def add(self, container_id: str, pod: str, **kw) -> dict:
        result = self.cni("ADD", container_id, pod, **kw)
        assert result.rc == 0 and result.doc is not None, result
        return result.doc

    # --- reading state ----------------------------------------------------------------
    def ip(self, ns: str, *args: str) -> list | dict:
        out = sh("ip", "-n", ns, "-j", *args).stdout
        return json.loads(out) if out.strip() else []

    def links(self, ns: str | None = None) -> dict[str, dict]:
        return {link["ifname"]: link for link in self.ip(ns or self.name, "-d", "link", "show")}

    def veths(self) -> list[str]:
        return sorted(n for n, link in self.links().items()
                      if link.get("linkinfo", {}).get("info_kind") == "veth")

    def ip_files(self, network: str | None = None) -> list[str]:
        d = os.path.join(self.data_dir, network or f"ovcni-{self.tag}")
        if not os.path.isdir(d):
            return []
        return sorted(n for n in os.listdir(d) if n[0].isdigit() and n != "last_reserved_ip.0")

    def wait_for(self, predicate, timeout: float = 10.0, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.05)


def store_files(node: CNINode) -> list[str]:
    """The node's IPAM store files of its test network (the lock and pods/ aside)."""
    d = os.path.join(node.data_dir, f"ovcni-{node.tag}")
    return sorted(n for n in os.listdir(d) if n not in ("lock", "pods")) if os.path.isdir(d) else []


def addrs6(node: CNINode, ns: str, dev: str) -> list[tuple[str, set[str]]]:
    """(address/prefix, flags) of ``dev``'s global IPv6 addresses in ``ns``."""
    return [(f"{a['local']}/{a['prefixlen']}",
             {k for k in ("tentative", "dadfailed", "nodad") if a.get(k)})
            for i in node.ip(ns, "-6", "addr", "show", "dev", dev) for a in i["addr_info"]
            if a.get("scope") == "global"]
