"""diagnose's policy-table check on an IPv6-only node (made-up state, no root): the node's
subnet it compiles the expected table with is its IPv6 lease's (the one its overlayd's
agent finds its pods by), not "unknown", so the drift check runs there too."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv6Address, IPv6Interface, IPv6Network

from overlay.config import parse_network_config
from overlay.diagnose import firewall as fw_mod, gather as ga, state as st
from overlay.lease import Lease, LeaseAttrs
from overlay.subnet.etcdconf import make_etcd_options

from .test_diagnose_ipv6 import dual_stack

OWN6 = IPv6Network("fd00:10:244:1::/64")


def ipv6_only() -> tuple[st.NodeState, st.ClusterState]:
    """A node of an IPv6-only network: no overlay.1, subnet.env with the IPv6 pair alone,
    leases that are IPv6 subnets."""
    node, dual = dual_stack()
    cfg = parse_network_config({"EnableIPv4": False, "EnableIPv6": True,
                                "IPv6Network": "fd00:10:244::/56"})
    leases = [Lease(IPv6Network(f"fd00:10:244:{i}::/64"),
                    LeaseAttrs(public_ip=IPv6Address(f"fd00:192:168:1::{10 + i}"), vni=1,
                               vtep_mac=f"0e:00:00:00:06:{i:02x}"))
              for i in (1, 2, 3)]
    assert node.kernel is not None and node.subnet_env is not None
    node.kernel = replace(node.kernel, links=[ln for ln in node.kernel.links
                                              if ln.name != "overlay.1"])
    node.subnet_env = node.subnet_env._replace(
        network=None, subnet=None, ipv6_network=IPv6Network("fd00:10:244::/56"),
        ipv6_subnet=IPv6Interface("fd00:10:244:1::1/64"))
    return node, st.ClusterState(config=cfg, leases=leases, now=dual.now)


def test_the_policy_table_check_gets_the_nodes_ipv6_subnet(monkeypatch) -> None:
    node, cluster = ipv6_only()
    asked = []
    monkeypatch.setattr(ga, "gather_node", lambda opts: node)
    monkeypatch.setattr(ga, "gather_cluster", lambda etcd, local_ips: cluster)
    monkeypatch.setattr(ga, "read_firewall", lambda *a, **kw: fw_mod.FirewallState())
    monkeypatch.setattr(ga, "read_ipv6_device", lambda node, name: None)
    monkeypatch.setattr(ga, "read_ipv6_kernel", lambda node: None)  # the made-up one stays

    def check(etcd, cluster, own_subnet, node_name, log_denied=False, **_where):
        asked.append(own_subnet)
        return st.CheckResult("policy-table", st.PASS, "", "")
    monkeypatch.setattr(ga, "check_policy_table", check)
    report = ga.diagnose(st.DiagnoseOptions(probe=False),
                         make_etcd_options(endpoints="http://127.0.0.1:1"))
    assert asked == [OWN6], asked
    assert report.facts.own_subnet == OWN6
