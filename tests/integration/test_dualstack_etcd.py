"""Dual-stack leases against a real etcd (issue 14): dual keys written and read as
Flannel's, pairing kept across restarts, and enabling IPv6 on a running IPv4 cluster
re-keys each lease in ONE transaction that peers see as a change, never a removal."""

from __future__ import annotations

import json
import random
import threading
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

import pytest

from overlay.config import parse_network_config
from overlay.lease import LeaseAttrs, LeaseRules, judge_all
from overlay.subnet.etcdconf import make_etcd_options
from overlay.subnet.manager import SubnetManager
from overlay.subnet.registry import EtcdRegistry

from .test_manager_etcd import Node

pytestmark = pytest.mark.integration

V4 = parse_network_config({"Network": "10.244.0.0/16"})
DUAL = parse_network_config({"Network": "10.244.0.0/16", "EnableIPv6": True,
                             "IPv6Network": "fd00:10:244::/56"})
PREFIX = "/overlay/network/subnets/"


def attrs(i: int, v6: bool = True) -> LeaseAttrs:
    a = LeaseAttrs(IPv4Address(f"192.168.1.{i}"), vtep_mac=f"0e:00:00:00:00:{i:02x}")
    if v6:
        a = replace(a, public_ipv6=IPv6Address(f"fd00:192:168:1::{i}"), v6_vni=1,
                    v6_vtep_mac=f"0e:00:00:00:01:{i:02x}")
    return a


@pytest.fixture
def registry(etcd_server):
    reg = EtcdRegistry(make_etcd_options(etcd_server.endpoint, timeout=3.0))
    try:
        yield reg
    finally:
        reg.close()


def raw(registry: EtcdRegistry) -> dict[str, bytes]:
    c = registry.client()
    return {m.key.decode(): v for v, m in c.get_prefix(PREFIX)}


def test_a_dual_stack_node_writes_flannels_key_and_value(registry):
    lease = SubnetManager(registry, DUAL, attrs(11), ttl=60,
                          previous_subnet=IPv4Network("10.244.7.0/24")).acquire()
    # paired by index: the 7th IPv4 subnet of the range takes the 7th IPv6 one
    assert lease.subnet == IPv4Network("10.244.7.0/24")
    assert lease.ipv6_subnet == IPv6Network("fd00:10:244:7::/64")
    stored = raw(registry)
    key = PREFIX + "10.244.7.0-24&fd00:10:244:7::-64"
    assert list(stored) == [key]
    assert stored[key] == (
        b'{"PublicIP":"192.168.1.11","PublicIPv6":"fd00:192:168:1::11","BackendType":"vxlan",'
        b'"BackendData":{"VNI":1,"VtepMAC":"0e:00:00:00:00:0b"},'
        b'"BackendV6Data":{"VNI":1,"VtepMAC":"0e:00:00:00:01:0b"}}')
    # a restart finds it by its IPv4 subnet and keeps the pairing; renewal works
    again = SubnetManager(registry, DUAL, attrs(11), ttl=60, rng=random.Random(9)).acquire()
    assert (again.subnet, again.ipv6_subnet) == (lease.subnet, lease.ipv6_subnet)
    assert list(raw(registry)) == [key]
    assert registry.renew_lease(again).ipv6_subnet == lease.ipv6_subnet
    assert registry.get_lease(lease.subnet).ipv6_subnet == lease.ipv6_subnet


def test_flannel_written_dual_stack_keys_are_read(registry):
    c = registry.client()
    c.put(PREFIX + "10.244.3.0-24&fd00:10:244:3::-64", json.dumps({
        "PublicIP": "192.168.1.13", "PublicIPv6": "fd00:192:168:1::13",
        "BackendType": "vxlan", "BackendData": {"VNI": 1, "VtepMAC": "0e:00:00:00:00:0d"},
        "BackendV6Data": {"VNI": 1, "VtepMAC": "0e:00:00:00:01:0d"}},
        separators=(",", ":")))
    c.put(PREFIX + "10.244.4.0-24", '{"PublicIP":"192.168.1.14","PublicIPv6":null,'
          '"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:00:00:00:00:0e"}}')
    leases, rev = registry.list_leases(with_expiration=False)
    j = judge_all(leases, LeaseRules.from_config(DUAL))
    by = {x.subnet: x for x in j.accepted}
    assert by[IPv4Network("10.244.3.0/24")].ipv6_subnet == IPv6Network("fd00:10:244:3::/64")
    assert by[IPv4Network("10.244.3.0/24")].attrs.public_ipv6 == IPv6Address("fd00:192:168:1::13")
    assert by[IPv4Network("10.244.4.0/24")].ipv6_subnet is None
    assert not j.rejected and not j.ipv6_rejected
    # a new node does not take a subnet or IPv6 subnet they hold
    mine = SubnetManager(registry, DUAL, attrs(11), ttl=60,
                         previous_subnet=IPv4Network("10.244.4.0/24")).acquire()
    assert mine.subnet not in by and mine.ipv6_subnet != IPv6Network("fd00:10:244:3::/64")


def test_a_node_without_ipv6_takes_an_ipv4_only_key(registry):
    lease = SubnetManager(registry, DUAL, attrs(12, v6=False), ttl=60).acquire()
    assert lease.ipv6_subnet is None
    assert list(raw(registry)) == [PREFIX + f"{lease.subnet.network_address}-24"]


def test_enabling_ipv6_rekeys_in_one_transaction_and_peers_see_no_removal(registry,
                                                                          etcd_server):
    """Two IPv4 nodes run; IPv6 is enabled and node 1 restarts with it: one revision
    deletes its old key and puts the dual key on the same etcd lease, and node 2's
    watch (still on the IPv4 config) sees no batch that removes node 1."""
    opts = make_etcd_options(etcd_server.endpoint, timeout=3.0)
    r1, r2 = EtcdRegistry(opts), EtcdRegistry(opts)
    n2 = Node(r2, 2, cfg=V4, ttl=60)
    try:
        old = SubnetManager(r1, V4, attrs(1, v6=False), ttl=60).acquire()
        n2.start()
        assert n2.remote_subnets() == {old.subnet}
        rev_before = registry.list_leases(with_expiration=False)[1]
        new = SubnetManager(r1, DUAL, attrs(1), ttl=60).acquire()
        assert new.subnet == old.subnet and new.ipv6_subnet is not None
        keys = raw(registry)
        dual_key = PREFIX + f"{old.subnet.network_address}-24&{new.ipv6_subnet.network_address}-64"
        assert dual_key in keys and PREFIX + f"{old.subnet.network_address}-24" not in keys
        # the delete and the put share one revision (one transaction), and the etcd lease
        c = registry.client()
        events = []
        done = threading.Event()
        it, cancel = c.watch_prefix(PREFIX, start_revision=rev_before + 1)
        for ev in it:
            events.append((type(ev).__name__, ev.key.decode(), ev.mod_revision, ev.lease))
            if len(events) >= 2:
                break
        cancel()
        done.set()
        (k1, key1, rev1, _), (k2, key2, rev2, lease2) = events[:2]
        assert (k1, k2) == ("DeleteEvent", "PutEvent") and rev1 == rev2
        assert key1 == PREFIX + f"{old.subnet.network_address}-24" and key2 == dual_key
        assert lease2 == old.etcd_lease_id
        # node 2 (IPv4 config) got no batch at all: what it programs did not change
        while not n2.batches.empty():
            b = n2.batches.get_nowait()
            assert not b.removed and not b.added, b
            for was, now in b.changed:
                assert was.subnet == now.subnet
        assert n2.remote_subnets(timeout=0.5) == {old.subnet}
    finally:
        n2.close()
        r1.close()
        r2.close()


def test_a_dual_stack_peer_sees_the_rekey_as_one_change(registry, etcd_server):
    opts = make_etcd_options(etcd_server.endpoint, timeout=3.0)
    r1, r2 = EtcdRegistry(opts), EtcdRegistry(opts)
    n2 = Node(r2, 2, cfg=DUAL, ttl=60)
    n2.mgr.attrs = attrs(2)
    try:
        old = SubnetManager(r1, DUAL, attrs(1, v6=False), ttl=60).acquire()
        assert old.ipv6_subnet is None
        n2.start()
        assert n2.remote_subnets() == {old.subnet}
        new = SubnetManager(r1, DUAL, attrs(1), ttl=60).acquire()
        b = n2.batches.get(timeout=5)
        assert not b.removed and not b.added
        [(was, now)] = b.changed
        assert was.ipv6_subnet is None and now.ipv6_subnet == new.ipv6_subnet
        assert now.attrs.public_ipv6 == IPv6Address("fd00:192:168:1::1")
    finally:
        n2.close()
        r1.close()
        r2.close()


def _cli(etcd_server, *args):
    from click.testing import CliRunner

    from overlay.cli import cli
    r = CliRunner().invoke(cli, ["--etcd-endpoints", etcd_server.endpoint, *args],
                           terminal_width=250)
    assert r.exit_code == 0, r.output
    return r.output


def test_config_set_ipv6_and_leases_list_show_both_halves(registry, etcd_server):
    out = _cli(etcd_server, "config", "set", "--network", "10.244.0.0/16",
               "--ipv6-network", "fd00:10:244::/56")
    assert "fd00:10:244::/56" in out
    assert registry.get_config().ipv6_network == IPv6Network("fd00:10:244::/56")
    assert "IPV6-NETWORK" in _cli(etcd_server, "config", "get")
    good = SubnetManager(registry, DUAL, attrs(11), ttl=60,
                         previous_subnet=IPv4Network("10.244.2.0/24")).acquire()
    no_v6 = SubnetManager(registry, DUAL, attrs(12, v6=False), ttl=60,
                          previous_subnet=IPv4Network("10.244.3.0/24")).acquire()
    # a hand-written lease whose IPv6 half is bad: its IPv4 half stays in use
    registry.client().put(PREFIX + "10.244.4.0-24&fd00:10:244:4::-64", json.dumps({
        "PublicIP": "192.168.1.14", "PublicIPv6": "fe80::14", "BackendType": "vxlan",
        "BackendData": {"VNI": 1, "VtepMAC": "0e:00:00:00:00:0e"},
        "BackendV6Data": {"VNI": 1, "VtepMAC": "0e:00:00:00:01:0e"}}))
    rows = {line.split()[0]: line for line in
            _cli(etcd_server, "-o", "wide", "leases", "list").splitlines()[1:]}
    assert "IPV6-SUBNET" in _cli(etcd_server, "-o", "wide", "leases", "list")
    assert "fd00:10:244:2::/64" in rows["10.244.2.0/24"] and rows["10.244.2.0/24"].endswith("ok")
    assert "none (no IPv6 subnet in its key)" in rows["10.244.3.0/24"]
    assert "ok (ipv6 rejected: public-ipv6-unusable)" in rows["10.244.4.0/24"]
    listed = {d["subnet"]: d for d in json.loads(_cli(etcd_server, "-o", "json", "leases",
                                                       "list"))}
    assert listed["10.244.2.0/24"]["ipv6_subnet"] == str(good.ipv6_subnet)
    assert listed["10.244.2.0/24"]["public_ipv6"] == "fd00:192:168:1::11"
    assert listed["10.244.2.0/24"]["ipv6_status"] == "ok"
    assert listed["10.244.3.0/24"]["ipv6_status"].startswith("none")
    assert "ipv6_subnet" not in listed["10.244.3.0/24"]  # an IPv4-only value: as before
    assert listed["10.244.4.0/24"]["ipv6_status"] == "rejected: public-ipv6-unusable"
    assert "rejected" not in listed["10.244.4.0/24"]
    shown = _cli(etcd_server, "leases", "show", "10.244.2.0/24")
    assert "10.244.2.0-24&fd00:10:244:2::-64" in shown and "fd00:192:168:1::11" in shown
    assert no_v6.ipv6_subnet is None
