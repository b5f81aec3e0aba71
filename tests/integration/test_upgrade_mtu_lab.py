"""The upgrade that turns Backend.MTU into the outer MTU (prefix ovupmtu).

Both nodes start on the last commit that gave Backend.MTU to ``overlay.<VNI>`` as is
(``support/release.py``'s ``INNER_BACKEND_MTU``), with Backend.MTU 1400: their devices
and the pods attached then have MTU 1400.  node1, then node2, is restarted on this tree:
its device shrinks to 1350 (said at INFO), new pods get 1350, and the pods attached
before keep 1400 until re-created yet still reach every pod, bulk TCP included (the node
answers their too-big packets with "fragmentation needed", so they learn the path MTU);
nothing ever sends more than the underlay carries.  Run under the integration lock.
"""

from __future__ import annotations

import json
import os
import socket
import threading

import pytest

from overlay.lab.lab import Lab, NodeDaemon
from overlay.lab.matrix import Endpoint, ping, reachability
from overlay.lab.system import ip, netns_socket

from .support.labfixture import running_lab
from .support.release import INNER_BACKEND_MTU, install_release, unknown_flags

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PREFIX = "ovupmtu"
NODES = ("node1", "node2")
OUTER, V4_OVERHEAD, ICMP4 = 1400, 50, 28
BULK = 256 * 1024


@pytest.fixture(scope="module")
def lab():
    bindir = install_release(INNER_BACKEND_MTU)
    old = NodeDaemon(os.path.join(bindir, "overlayd"), unknown_flags(bindir))
    with running_lab(nodes=2, pods_per_node=1, prefix=PREFIX,
                     daemons=dict.fromkeys(NODES, old)) as lab:
        config = json.loads(lab.overlayctl("-o", "json", "config", "get").stdout)
        config.setdefault("Backend", {})["MTU"] = OUTER
        lab.overlayctl("config", "set", "-f", "-", input=json.dumps(config))
        for node in NODES:
            restart(lab, node)
        lab.add_pod("before", "node1")  # attached while overlay.1 has the old MTU
        yield lab


def restart(lab: Lab, node: str) -> None:
    lab.stop_daemon(node)
    lab.start_daemon(node)
    lab.wait_ready([node], timeout=30)


def mtu(ns: str, device: str) -> int:
    return json.loads(ip("-j", "link", "show", "dev", device, ns=ns).stdout)[0]["mtu"]


def by_name(lab: Lab, name: str):
    assert lab.state is not None
    return next(p for p in lab.state.pods.values() if p.name == name)


def far_pod(lab: Lab):
    """node2's pod (the lab's own, attached by the old release)."""
    assert lab.state is not None
    return lab.state.pods_of("node2")[0]


def addr(p) -> str:
    return (p.ip or "").split("/")[0]


def all_pods_reach_each_other(lab: Lab) -> list[tuple[str, str]]:
    assert lab.state is not None
    pods = [Endpoint(p.key, lab.spec.pod_ns(p.key), addr(p), p.node)
            for p in lab.state.pods.values()]
    return sorted(pair for pair, ok in reachability(pods).items() if not ok)


def bulk_tcp(lab: Lab, src, dst) -> int:
    """Bytes a TCP connection from pod ``src`` delivers to a server in pod ``dst`` (BULK
    sent in full-size segments, which a smaller path MTU must make the sender shrink)."""
    server = netns_socket(lab.spec.pod_ns(dst.key))
    server.settimeout(20)
    server.bind((addr(dst), 9100))
    server.listen(1)
    got: list[int] = []

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            conn.settimeout(20)
            total = 0
            while chunk := conn.recv(65536):
                total += len(chunk)
            got.append(total)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    client = netns_socket(lab.spec.pod_ns(src.key))
    try:
        client.settimeout(20)
        client.connect((addr(dst), 9100))
        client.sendall(bytes(BULK))
        client.shutdown(socket.SHUT_WR)
        t.join(25)
    finally:
        client.close()
        server.close()
    return got[0] if got else 0


def test_the_old_release_gives_backend_mtu_to_the_device_as_is(lab):
    for node in NODES:
        assert mtu(lab.spec.node_ns(node), "overlay.1") == OUTER
    assert mtu(lab.spec.pod_ns(by_name(lab, "before").key), "eth0") == OUTER
    assert all_pods_reach_each_other(lab) == []


def test_upgraded_node_shrinks_its_device_and_says_so(lab):
    lab.daemons.pop("node1")
    restart(lab, "node1")
    ns = lab.spec.node_ns("node1")
    assert mtu(ns, "overlay.1") == OUTER - V4_OVERHEAD
    assert mtu(ns, "overlay.1") + V4_OVERHEAD <= mtu(ns, "eth0")  # the underlay carries it
    with open(lab.daemon_log("node1"), encoding="utf-8", errors="replace") as f:
        log = f.read().rsplit("\n--- ", 1)[-1]
    assert "INFO overlay.vxlan.device: VXLAN device overlay.1: MTU 1400 -> 1350" in log, \
        log[-3000:]
    with open(lab.spec.node_file("node1", "subnet.env")) as f:
        assert "OVERLAY_MTU=1350\n" in f.read()


def test_pods_keep_working_across_the_upgrade(lab):
    before, far = by_name(lab, "before"), far_pod(lab)
    src = lab.spec.pod_ns(before.key)
    assert mtu(src, "eth0") == OUTER  # kept until re-created
    assert all_pods_reach_each_other(lab) == []  # old node2 <-> new node1, both ways
    assert bulk_tcp(lab, before, far) == BULK
    assert bulk_tcp(lab, far, before) == BULK
    # a full-size DF packet of the old pod is refused by its node, never sent on
    assert not ping(src, addr(far), wait=1, size=OUTER - ICMP4, dont_fragment=True)
    assert ping(src, addr(far), wait=2, size=OUTER - V4_OVERHEAD - ICMP4, dont_fragment=True,
                attempts=2)
    new = lab.add_pod("after", "node1")
    assert mtu(lab.spec.pod_ns(new.key), "eth0") == OUTER - V4_OVERHEAD


def test_both_nodes_upgraded_everything_reaches_everything(lab):
    lab.daemons.pop("node2")
    restart(lab, "node2")
    for node in NODES:
        assert mtu(lab.spec.node_ns(node), "overlay.1") == OUTER - V4_OVERHEAD
    assert all_pods_reach_each_other(lab) == []
    assert bulk_tcp(lab, far_pod(lab), by_name(lab, "before")) == BULK
