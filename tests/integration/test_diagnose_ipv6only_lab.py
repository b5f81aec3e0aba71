"""``overlayctl diagnose`` on a real IPv6-only lab (EnableIPv4 false, prefix ovdo6): two
nodes, one pod each, overlay-v6.1 as each node's one device, VXLAN over the IPv6 underlay.

Healthy, every check passes with no flags.  Then one breakage at a time on node1 (its
overlayd stopped so it repairs nothing): a route, an FDB entry or a neighbour deleted,
IPv6 forwarding off, UDP 8472 dropped by ip6 nft or ip6tables, the device's MTU changed.
Each fails exactly its check (and peer-vteps where the peer is then unreachable); the fix
diagnose prints, run as printed, repairs it.  Run under the lock:

    flock /tmp/overlay-integration.lock env OVERLAY_VENV=... ./cmd/run-tests \\
        tests/integration/test_diagnose_ipv6only_lab.py
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

import pytest

from overlay.lab.lab import Lab
from overlay.lab.system import ip

from .support.lab_ipv6 import V6_DEVICE, device_mac
from .support.labfixture import running_lab
from .test_diagnose_lab import OVERLAYCTL, LabNode, check, failed, sh

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PREFIX = "ovdo6"


@pytest.fixture(scope="module")
def lab():
    with running_lab(nodes=2, pods_per_node=1, prefix=PREFIX, families="ipv6") as lab:
        yield lab


@pytest.fixture
def n1(lab):
    return LabNode(lab, "node1")


# NetworkPolicy is IPv4-only so far (README, "IPv6-only"): an IPv6-only node has no policy
# table to compare, and policy-table says it skipped; every other check must pass.
STATED_SKIPS = {"policy-table"}


def not_passing(report: dict) -> dict[str, str]:
    return {c["name"]: f"{c['status']}: {c['found']}" for c in report["checks"]
            if c["status"] != "pass" and not (c["status"] == "skip"
                                              and c["name"] in STATED_SKIPS)}


def test_healthy_ipv6_only_nodes_pass_every_check_of_the_ipv6_data_plane(lab):
    for node in lab.state.nodes:
        rc, report = LabNode(lab, node).diagnose()
        assert not_passing(report) == {} and rc == 0
        names = [c["name"] for c in report["checks"]]
        for name in ("bridge", "vxlan-device", "routes", "fdb", "neigh", "ip-forward",
                     "firewall", "mtu", "ipv6-pod-ips", "local-pods", "peer-vteps"):
            assert name in names
        assert "pod-ips" not in names and "ipv6-data-plane" not in names
        me, subnet6 = str(lab.spec.node_ip6(node)), lab.spec.node_subnet6(node)
        assert report["node"]["public_ip"] == me and report["node"]["peers"] == 1
        assert report["node"]["vxlan_device"] == V6_DEVICE
        assert f"local {me} " in check(report, "vxlan-device")["found"]
        assert f"{subnet6.network_address}/128" in check(report, "vxlan-device")["found"]
        assert f"{subnet6.network_address + 1}/64" in check(report, "bridge")["found"]
        assert check(report, "ip-forward")["expected"] == "net.ipv6.conf.all.forwarding = 1"
        assert check(report, "mtu")["found"].startswith(f"{V6_DEVICE} 1430")  # 1500 - 70
        assert "answered 1382-byte DF pings" in check(report, "peer-vteps")["found"]
        assert check(report, "local-pods")["found"] == "1 pod(s) answered over cni0"
        assert check(report, "ipv6-pod-ips")["found"] == "1 IPv6 address(es), 1 bridge port(s)"
        assert "VtepMAC" not in check(report, "lease")["found"]
    table = LabNode(lab, "node1").run(OVERLAYCTL, "diagnose")  # the table, exit 0
    assert f"device {V6_DEVICE}" in table.stdout and "Traceback" not in table.stderr


@dataclass(frozen=True)
class Breakage:
    do: list[list[str]]  # commands in node1's namespace
    undo: list[list[str]]
    check: str  # the check that fails
    unreachable: bool  # node2's VTEP no longer answers: peer-vteps fails too


def breakages(lab: Lab) -> dict[str, Breakage]:
    subnet = str(lab.spec.node_subnet6("node2"))
    gw = str(lab.spec.node_subnet6("node2").network_address)
    mac, pub = device_mac(lab, "node2"), str(lab.spec.node_ip6("node2"))
    drop = ["INPUT", "-p", "udp", "--dport", "8472", "-j", "DROP"]
    neigh = ["ip", "neigh", "replace", gw, "lladdr", mac, "dev", V6_DEVICE, "nud", "permanent"]
    return {
        "route": Breakage([["ip", "-6", "route", "del", subnet, "dev", V6_DEVICE]],
                          [["ip", "route", "replace", subnet, "via", gw, "dev", V6_DEVICE,
                            "onlink", "proto", "111"]], "routes", True),
        "fdb": Breakage([["bridge", "fdb", "del", mac, "dev", V6_DEVICE, "dst", pub, "self"]],
                        [["bridge", "fdb", "replace", mac, "dev", V6_DEVICE, "dst", pub,
                          "self", "permanent"]], "fdb", True),
        "neigh": Breakage([["ip", "-6", "neigh", "del", gw, "dev", V6_DEVICE]], [neigh],
                          "neigh", True),
        "forwarding": Breakage([["sysctl", "-qw", "net.ipv6.conf.all.forwarding=0"]],
                               [["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]],
                               "ip-forward", False),
        "nft": Breakage([["nft", "add", "table", "ip6", PREFIX],
                         ["nft", "add", "chain", "ip6", PREFIX, "input",
                          "{ type filter hook input priority 0; }"],
                         ["nft", "add", "rule", "ip6", PREFIX, "input", "udp", "dport",
                          "8472", "drop"]],
                        [["nft", "delete", "table", "ip6", PREFIX]], "firewall", True),
        "ip6tables": Breakage([["ip6tables", "-w", "-A", *drop]],
                              [["ip6tables", "-w", "-D", *drop]], "firewall", True),
        "mtu": Breakage([["ip", "link", "set", V6_DEVICE, "mtu", "1400"]],
                        [["ip", "link", "set", V6_DEVICE, "mtu", "1430"]], "mtu", False),
    }


def printed_fix(fix: str) -> list[str]:
    """The first command of a check's fix, as diagnose prints it (before its "; or ..."
    and "(...)" remarks)."""
    return shlex.split(re.split(r" \(|; ", fix)[0])


@pytest.mark.parametrize("what", ["route", "fdb", "neigh", "forwarding", "nft", "ip6tables",
                                  "mtu"])
def test_one_breakage_fails_its_check_and_its_printed_fix_repairs_it(lab, n1, what):
    b = breakages(lab)[what]
    nsx = ["ip", "netns", "exec", n1.ns]
    with n1.frozen():
        try:
            for cmd in b.do:
                sh(*nsx, *cmd)
            rc, report = n1.diagnose_frozen()
            assert rc == 1, not_passing(report)
            want = sorted([b.check] + (["peer-vteps"] if b.unreachable else []))
            assert failed(report) == want, not_passing(report)
            sh(*nsx, *printed_fix(check(report, b.check)["fix"]))
            rc, report = n1.diagnose_frozen()
            assert rc == 0 and not_passing(report) == {}, not_passing(report)
        finally:
            for cmd in b.undo:
                sh(*nsx, *cmd, check=False)
    assert ip("-6", "route", "show", "dev", V6_DEVICE, ns=n1.ns).stdout
