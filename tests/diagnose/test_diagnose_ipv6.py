"""diagnose's ipv6-data-plane check on made-up state (no root): the IPv6 device's MTU and
exactly the entries of the remote leases' IPv6 halves."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv6Address, IPv6Interface, IPv6Network

from overlay.config import parse_network_config
from overlay.diagnose import checks as dg, state as st
from overlay.vxlan.entries import FDB, DeviceView, Entries, Neigh, Route

from .test_diagnose import PEERS, healthy, statuses

DEV = "overlay-v6.1"
MY6 = IPv6Address("fd00:192:168:1::11")


def dual_stack(device: bool = True, mtu: int = 1430, own_v6: bool = True):
    """``healthy()``'s cluster with IPv6 on: every lease has an IPv6 half, and the node an
    overlay-v6.1 holding exactly the peers' IPv6 entries."""
    node, cluster = healthy()
    cluster.config = parse_network_config({"Network": "10.244.0.0/16", "EnableIPv6": True,
                                           "IPv6Network": "fd00:10:244::/56"})
    leases = []
    entries = Entries()
    for i, lease in enumerate(cluster.leases, start=1):
        public6 = IPv6Address(f"fd00:192:168:1::{10 + i}")
        mac6 = f"0e:00:00:00:06:{i:02x}"
        if i == 1 and not own_v6:
            leases.append(lease)
            continue
        leases.append(replace(lease, ipv6_subnet=IPv6Network(f"fd00:10:244:{i}::/64"),
                              attrs=replace(lease.attrs, public_ipv6=public6, v6_vni=1,
                                            v6_vtep_mac=mac6)))
        if i > 1:
            gw = IPv6Address(f"fd00:10:244:{i}::")
            for e in (Neigh(gw, mac6), FDB(mac6, public6),
                      Route(IPv6Network(f"fd00:10:244:{i}::/64"), gw)):
                entries.add(e)
    cluster.leases = leases
    if device:
        node.ipv6_device = DeviceView(DEV, mtu, "0e:00:00:00:06:01", MY6, 1500,
                                      IPv6Interface(f"{MY6}/64"), entries)
    return node, cluster


def check(node, cluster) -> st.CheckResult:
    checks, _ = statuses(node, cluster)
    return checks["ipv6-data-plane"]


def test_ipv4_only_cluster_passes():
    node, cluster = healthy()
    assert check(node, cluster).status == st.PASS


def test_healthy_dual_stack_node_passes():
    node, cluster = dual_stack()
    c = check(node, cluster)
    assert c.status == st.PASS, c.found
    assert f"{len(PEERS)} peer(s)" in c.expected


def test_ipv6_device_mtu_of_ipv4_is_a_failure():
    node, cluster = dual_stack(mtu=1450)  # flannel#1781's MTU
    c = check(node, cluster)
    assert c.status == st.FAIL and "MTU 1450, want 1430" in c.found
    assert f"ip link set {DEV} mtu 1430" in c.fix


def test_missing_and_stale_ipv6_entries_are_named():
    node, cluster = dual_stack()
    assert node.ipv6_device is not None
    es = node.ipv6_device.entries
    del es.routes[IPv6Network("fd00:10:244:3::/64")]
    es.add(Neigh(IPv6Address("fd00:10:244:9::"), "0e:00:00:00:06:09"))
    c = check(node, cluster)
    assert c.status == st.FAIL
    assert "missing: route fd00:10:244:3::/64 via fd00:10:244:3:: onlink" in c.found
    assert "stale (no lease): neigh fd00:10:244:9:: lladdr 0e:00:00:00:06:09" in c.found


def test_no_ipv6_device_fails_and_no_ipv6_half_warns():
    node, cluster = dual_stack(device=False)
    c = check(node, cluster)
    assert c.status == st.FAIL and f"no IPv6 VXLAN device {DEV}" in c.found
    node, cluster = dual_stack(device=False, own_v6=False)
    c = check(node, cluster)
    assert c.status == st.WARN and "no IPv6 half" in c.found and "--public-ipv6" in c.fix


def test_check_runs_from_run_checks_only_once():
    node, cluster = dual_stack()
    report = dg.run_checks(node, cluster, st.DiagnoseOptions())
    assert [c.name for c in report.checks].count("ipv6-data-plane") == 1


def test_ipv6_df_probes_pass_or_name_the_path_mtu_problem():
    node, cluster = dual_stack()
    peers = [(IPv6Network(f"fd00:10:244:{i}::/64"), IPv6Address(f"fd00:10:244:{i}::"))
             for i in (2, 3)]
    node.probes6 = [st.Probe6Result(s, t, 1382, 2, 2) for s, t in peers]
    c = check(node, cluster)
    assert c.status == st.PASS and "2 peer(s) answered 1382-byte DF pings over IPv6" in c.found
    node.probes6 = [st.Probe6Result(*peers[0], 1382, 2, 2),
                    st.Probe6Result(*peers[1], 1382, 2, 0, small_received=1)]
    c = check(node, cluster)
    assert c.status == st.FAIL and "fd00:10:244:3:: (fd00:10:244:3::/64) answers only small" \
        in c.found and "below 1430" in c.found and "Backend.MTU" in c.fix
    node.probes6 = [st.Probe6Result(*peers[1], 1382, 2, 0, small_received=0)]
    c = check(node, cluster)
    assert c.status == st.FAIL and "does not answer" in c.found and "8472" in c.fix


def test_probe_peers6_pings_the_programmed_ipv6_vteps_at_the_device_mtu():
    from overlay.diagnose.gather import probe_peers6
    from overlay.diagnose.probe import Echo
    node, cluster = dual_stack()
    assert node.ipv6_device is not None
    calls = []

    def echo(targets, size, count, timeout):
        calls.append((list(targets), size))
        return {t: Echo(count, count if size == 56 or str(t).startswith("fd00:10:244:2:")
                        else 0) for t in targets}
    got = probe_peers6(cluster.leases, node.ipv6_device, 2, 1.0, echo)
    assert calls[0] == ([IPv6Address("fd00:10:244:2::"), IPv6Address("fd00:10:244:3::")], 1382)
    assert calls[1] == ([IPv6Address("fd00:10:244:3::")], 56)
    assert [(p.received, p.small_received) for p in got] == [(2, None), (0, 1)]


def _dual_env(node, mtu):
    node.subnet_env = node.subnet_env._replace(
        mtu=mtu, ipv6_network=IPv6Network("fd00:10:244::/56"),
        ipv6_subnet=IPv6Interface("fd00:10:244:1::1/64"))


def test_pod_mtu_of_a_dual_stack_node_is_the_smaller_devices():
    node, cluster = dual_stack()
    links = [ln._replace(mtu=1430) if ln.name in ("cni0", "veth1234") else ln
             for ln in node.kernel.links]
    node.kernel = replace(node.kernel, links=links)
    _dual_env(node, 1430)
    checks, _ = statuses(node, cluster)
    assert checks["mtu"].status == st.PASS, checks["mtu"].found
    assert "OVERLAY_MTU 1430 (the smaller of both families')" in checks["mtu"].expected
    _dual_env(node, 1450)  # the IPv4 device's: too big for IPv6
    checks, _ = statuses(node, cluster)
    assert checks["mtu"].status == st.FAIL and "OVERLAY_MTU 1450 != 1430" in checks["mtu"].found


def test_backend_mtu_gives_the_ipv6_device_the_outer_mtu_less_70():
    node, cluster = dual_stack(mtu=1330)
    cluster.config = replace(cluster.config, backend=replace(cluster.config.backend, mtu=1400))
    assert check(node, cluster).status == st.PASS
    node, cluster = dual_stack(mtu=1400)  # Backend.MTU given to the device as is: #1781
    cluster.config = replace(cluster.config, backend=replace(cluster.config.backend, mtu=1400))
    c = check(node, cluster)
    assert c.status == st.FAIL and "MTU 1400, want 1330" in c.found
