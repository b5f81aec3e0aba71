"""The VXLAN netlink edge against a real kernel, in a throwaway namespace ``ovd-vx-*``."""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import secrets
import subprocess
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

import pytest

from overlay.lease import Lease, LeaseAttrs
from overlay.vxlan.backend import BackendSettings, VXLANBackend
from overlay.vxlan.device import VXLANDevice, VXLANSpec, find_underlay, open_netlink
from overlay.vxlan.entries import FDB, Neigh, Op, Route

pytestmark = pytest.mark.integration


def ip(ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "-n", ns, *args], capture_output=True, text=True, check=check)


def ipj(ns: str, *args: str) -> list[dict]:
    out = ip(ns, "-j", *args).stdout
    return json.loads(out) if out.strip() else []


def kernel_entries(ns: str) -> set:
    """The remote entries in ``ns`` as iproute2 reads them (not our own dump): permanent
    neighbours and FDB entries with a destination on overlay.1, and proto 111 routes."""
    out: set = set()
    for n in ipj(ns, "neigh", "show", "dev", "overlay.1", "nud", "permanent"):
        out.add(Neigh(IPv4Address(n["dst"]), n["lladdr"]))
    fdb = subprocess.run(["bridge", "-n", ns, "-j", "fdb", "show", "dev", "overlay.1"],
                         capture_output=True, text=True, check=True).stdout
    for f in json.loads(fdb) if fdb.strip() else []:
        if f.get("dst"):
            out.add(FDB(f["mac"], IPv4Address(f["dst"])))
    for r in ipj(ns, "route", "show", "proto", "111"):
        out.add(Route(IPv4Network(r["dst"]), IPv4Address(r["gateway"]), direct=r["dev"] == "eth0"))
    return out


@pytest.fixture
def netns():
    name = f"ovd-vx-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        ip(name, "link", "set", "lo", "up")
        ip(name, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1")
        ip(name, "addr", "add", "192.168.1.11/24", "dev", "eth0")
        ip(name, "link", "set", "eth0", "up")
        ip(name, "link", "set", "eth1", "up")
        ip(name, "route", "add", "default", "via", "192.168.1.1")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def spec_for(ns: str, **kw) -> VXLANSpec:
    nl = open_netlink(ns)
    try:
        u = find_underlay(nl, None, None)
    finally:
        nl.close()
    base = VXLANSpec(name="overlay.1", vni=1, port=8472, local=u.address.ip,
                     underlay_index=u.index, mtu=u.mtu - 50, mac="0e:00:00:00:00:11")
    return dataclasses.replace(base, **kw)


@pytest.fixture
def device(netns):
    d = VXLANDevice(spec_for(netns), netns)
    d.ensure()
    d.ensure_address(IPv4Interface("10.244.1.0/32"))
    try:
        yield d
    finally:
        d.close()


def test_underlay_default_route_regex_and_public_ip(netns):
    nl = open_netlink(netns)
    try:
        assert find_underlay(nl, None, None).name == "eth0"
        assert find_underlay(nl, "eth[0-9]", None).name == "eth0"
        u = find_underlay(nl, None, IPv4Address("192.168.1.11"))
        assert u.name == "eth0" and u.address == IPv4Interface("192.168.1.11/24")
        from overlay.errors import ConfigError
        with pytest.raises(ConfigError, match="no interface"):
            find_underlay(nl, None, IPv4Address("10.9.9.9"))
        with pytest.raises(ConfigError, match="no interface matches"):
            find_underlay(nl, "wlan.*", None)
    finally:
        nl.close()


def test_device_settings(device, netns):
    link = ipj(netns, "-d", "link", "show", "overlay.1")[0]
    info = link["linkinfo"]["info_data"]
    assert info["id"] == 1 and info["port"] == 8472 and info["local"] == "192.168.1.11"
    assert info["learning"] is False and info["link"] == "eth0"
    assert link["mtu"] == 1450 and link["address"] == "0e:00:00:00:00:11"
    assert "UP" in link["flags"]
    addrs = ipj(netns, "addr", "show", "overlay.1")[0]["addr_info"]
    assert [(a["local"], a["prefixlen"]) for a in addrs if a["family"] == "inet"] == \
        [("10.244.1.0", 32)]


def test_compatible_device_kept_incompatible_recreated(device, netns, caplog):
    index = device.index

    def ensure(**kw) -> tuple[bool, int]:
        d = VXLANDevice(spec_for(netns, **kw), netns)
        try:
            return d.ensure(), d.index
        finally:
            d.close()
    assert ensure() == (False, index)
    # MTU and MAC differ: fixed in place, same device
    assert ensure(mtu=1400, mac="0e:00:00:00:00:22") == (False, index)
    link = ipj(netns, "link", "show", "overlay.1")[0]
    assert (link["mtu"], link["address"]) == (1400, "0e:00:00:00:00:22")
    caplog.set_level(logging.INFO)
    assert ensure(vni=5, port=4789)[0] is True
    assert "VNI 1 != 5" in caplog.text and "port 8472 != 4789" in caplog.text
    info = ipj(netns, "-d", "link", "show", "overlay.1")[0]["linkinfo"]["info_data"]
    assert info["id"] == 5 and info["port"] == 4789


def test_address_replaced_not_added(device, netns):
    device.ensure_address(IPv4Interface("10.244.7.0/32"))
    addrs = ipj(netns, "addr", "show", "overlay.1")[0]["addr_info"]
    assert [a["local"] for a in addrs if a["family"] == "inet"] == ["10.244.7.0"]


def test_program_dump_roundtrip_and_delete_missing(device, netns):
    gw = IPv4Address("10.244.2.0")
    net = IPv4Network("10.244.2.0/24")
    ops = [Op(True, Neigh(gw, "0e:00:00:00:00:02")),
           Op(True, FDB("0e:00:00:00:00:02", IPv4Address("192.168.1.12"))),
           Op(True, Route(net, gw)), Op(True, Route(IPv4Network("10.244.3.0/24"),
                                                    IPv4Address("192.168.1.13"), direct=True))]
    assert device.program(ops) == [0, 0, 0, 0]
    assert kernel_entries(netns) == {op.entry for op in ops}  # read by iproute2
    assert set(device.dump().all()) == {op.entry for op in ops}
    routes = {r["dst"]: r for r in ipj(netns, "route", "show")}
    assert routes["10.244.2.0/24"]["dev"] == "overlay.1"
    assert "onlink" in routes["10.244.2.0/24"]["flags"]
    assert routes["10.244.3.0/24"]["dev"] == "eth0"
    # deleting twice: the second time is still success
    dels = [Op(False, op.entry) for op in reversed(ops)]
    assert device.program(dels) == [0, 0, 0, 0]
    assert device.program(dels) == [0, 0, 0, 0]
    assert kernel_entries(netns) == set() and len(device.dump()) == 0


def test_one_failing_op_does_not_stop_the_batch(device):
    # no route to the gateway
    bad = Route(IPv4Network("10.244.4.0/24"), IPv4Address("172.31.0.1"), direct=True)
    ops = [Op(True, Neigh(IPv4Address("10.244.5.0"), "0e:00:00:00:00:05")), Op(True, bad),
           Op(True, FDB("0e:00:00:00:00:05", IPv4Address("192.168.1.15")))]
    codes = device.program(ops)
    assert codes[0] == 0 and codes[1] in (errno.ENETUNREACH, errno.EINVAL) and codes[2] == 0


def test_thousand_remotes_and_reconcile_leaves_right_entries_alone(device, netns):
    backend = VXLANBackend(device, BackendSettings(1, IPv4Address("192.168.1.11"),
                                                   IPv4Interface("192.168.1.11/24")))
    leases = [Lease(IPv4Network(f"10.{100 + i // 256}.{i % 256}.0/24"),
                    LeaseAttrs(IPv4Address("192.168.50.0") + i, "vxlan", 1,
                               f"0e:00:00:00:{i // 256:02x}:{i % 256:02x}"))
              for i in range(1000)]
    res = backend.reconcile(leases)
    assert res.added == 3000 and not res.failed
    want = set()
    for lease in leases:
        mac = lease.attrs.vtep_mac
        assert mac is not None, "every lease made above has a VTEP MAC"
        want |= {Neigh(lease.subnet.network_address, mac), FDB(mac, lease.attrs.public_ip),
                 Route(lease.subnet, lease.subnet.network_address)}
    have = kernel_entries(netns)
    assert have == want
    # a stale peer (made by hand) and a missing entry
    ip(netns, "route", "del", "10.100.5.0/24")
    ip(netns, "neigh", "add", "10.99.0.0", "lladdr", "0e:99:00:00:00:00", "dev", "overlay.1",
       "nud", "permanent")
    res = backend.reconcile()
    assert (res.added, res.removed) == (1, 1)
    assert kernel_entries(netns) == have and len(device.dump()) == 3000
    res = backend.reconcile()
    assert (res.added, res.removed) == (0, 0)
