"""The one acceptance rule for remote leases (overlay.lease): codec, checks, MAC claims."""

import json
from ipaddress import IPv4Address, IPv4Network

import pytest

from overlay.config import parse_network_config
from overlay.errors import RegistryError
from overlay.lease import (
    EventType,
    Lease,
    LeaseAttrs,
    LeaseEvent,
    LeaseRules,
    LeaseView,
    Reason,
    Rejection,
    SubnetKeyName,
    check_remote,
    decode_kv,
    etcdctl_del,
    judge,
    key_to_subnet,
    parse_key_name,
    printable_key,
)

PREFIX = "/overlay/network/subnets/"
CFG = parse_network_config({"Network": "10.244.0.0/16", "SubnetMin": "10.244.1.0",
                            "SubnetMax": "10.244.200.0"})
OWN = IPv4Network("10.244.1.0/24")
OWN_IP = IPv4Address("192.168.1.11")
OWN_MAC = "0e:00:00:00:00:0b"
RULES = LeaseRules.from_config(CFG, (OWN,), (OWN_IP,), OWN_MAC)


def net(i, plen=24):
    return IPv4Network(f"10.244.{i}.0/{plen}")


def lease(i=5, ip="192.168.1.50", mac="0e:00:00:00:00:50", vni=1, btype="vxlan",
          subnet=None, created=0, mod=0):
    return Lease(subnet or net(i), LeaseAttrs(IPv4Address(ip), btype, vni, mac),
                 mod_revision=mod or created, create_revision=created)


def value(ip="192.168.1.50", mac="0e:00:00:00:00:50", **data):
    bd = {"VNI": 1, "VtepMAC": mac, **data}
    return json.dumps({"PublicIP": ip, "BackendType": "vxlan", "BackendData": bd}).encode()


# ---- key codec ------------------------------------------------------------------------

@pytest.mark.parametrize("key", [
    PREFIX + "10.244.5.0-24\n",  # the alias that hijacked another node's FDB entry
    PREFIX + "10.244.5.0-24 ", PREFIX + " 10.244.5.0-24",
    PREFIX + "x/10.244.5.0-24",  # extra segments
    PREFIX + "10.244.5.0-24/x",
    PREFIX + "010.244.5.0-24",  # leading zeros
    PREFIX + "10.244.05.0-24", PREFIX + "10.244.5.0-024",
    "/other/subnets/10.244.5.0-24",  # another prefix
    PREFIX + "10.244.5.1-24",  # host bits
    PREFIX,
])
def test_key_codec_is_a_whole_string_match(key):
    assert decode_kv(PREFIX, key.encode(), value())[0] == Reason.BAD_KEY
    with pytest.raises(ValueError):
        key_to_subnet(key, PREFIX)


def test_key_codec_round_trips_and_returns_a_typed_name():
    assert parse_key_name("10.244.5.0-24").subnet == net(5)
    assert parse_key_name("10.244.5.0-24").encode() == "10.244.5.0-24"
    name = decode_kv(PREFIX, (PREFIX + "10.244.5.0-24").encode(), value())[0]
    assert isinstance(name, SubnetKeyName) and name.subnet == net(5)


def test_non_utf8_key_is_a_bad_key():
    assert decode_kv(PREFIX, PREFIX.encode() + b"\xff", value())[0] == Reason.BAD_KEY


# ---- value codec ----------------------------------------------------------------------

@pytest.mark.parametrize("raw", [
    b'{"PublicIP": "192.168.1.50", "BackendData": {"VNI": 1e400}}',
    b'{"PublicIP": "192.168.1.50", "BackendData": {"VNI": "1"}}',
    b'{"PublicIP": "192.168.1.50", "BackendData": {"VNI": true}}',
    b'{"PublicIP": "192.168.1.50", "BackendData": {"VNI": 16777216}}',
    b'{"PublicIP": "192.168.1.50", "BackendData": {"VNI": -1}}',
    b'{"PublicIP": "192.168.1.50", "BackendData": {"VNI": ' + b"9" * 5000 + b"}}",
    b"[" * 20000 + b"]" * 20000,  # RecursionError inside json, under 64 KiB
    b'{"PublicIP": 3232235826}', b'{"PublicIP": ["192.168.1.50"]}', b"{}", b"null", b"[]",
    b'{"PublicIP": "192.168.1.50", "BackendType": 7}',
    b'{"PublicIP": "192.168.1.50", "BackendData": []}',
    b'{"PublicIP": "192.168.1.50", "BackendData": {"VtepMAC": 5}}',
    b'{"PublicIP": "192.168.1.50", "BackendData": {"VtepMAC": "zz"}}',
    b'{"PublicIP": "192.168.1.050"}', b"\xff\xfe", b"",
])
def test_any_bad_value_is_a_bad_value(raw):
    out = decode_kv(PREFIX, (PREFIX + "10.244.5.0-24").encode(), raw)
    assert len(out) == 3  # rejected: (reason, detail, subnet)
    reason, detail, subnet = out
    assert reason == Reason.BAD_VALUE and subnet == net(5) and detail
    with pytest.raises(RegistryError):
        LeaseAttrs.from_json(raw)


def test_value_larger_than_64k_is_rejected_before_decoding():
    raw = value(pad="x" * (64 * 1024))
    out = decode_kv(PREFIX, (PREFIX + "10.244.5.0-24").encode(), raw)
    assert len(out) == 3  # rejected: (reason, detail, subnet)
    reason, detail, _ = out
    assert reason == Reason.VALUE_TOO_LARGE and "65536" in detail


def test_missing_vni_decodes_as_none_and_is_ours():
    raw = json.dumps({"PublicIP": "192.168.1.50", "BackendType": "vxlan",
                      "BackendData": {"VtepMAC": "0e:00:00:00:00:50"}}).encode()
    out = decode_kv(PREFIX, (PREFIX + "10.244.5.0-24").encode(), raw)
    assert len(out) == 2  # accepted: (subnet, attrs)
    _, attrs = out
    assert attrs.vni is None
    assert check_remote(Lease(net(5), attrs), RULES).ok


# ---- the per-lease checks -------------------------------------------------------------

@pytest.mark.parametrize("candidate, reason", [
    (lease(subnet=IPv4Network("10.244.5.0/25")), Reason.SUBNET_LENGTH),
    (lease(subnet=IPv4Network("128.0.0.0/1")), Reason.SUBNET_LENGTH),
    (lease(subnet=IPv4Network("10.245.5.0/24")), Reason.SUBNET_OUTSIDE_NETWORK),
    (lease(subnet=IPv4Network("192.168.1.0/24")), Reason.SUBNET_OUTSIDE_NETWORK),
    (lease(subnet=OWN), Reason.OWN_SUBNET),
    (lease(ip="127.0.0.1"), Reason.PUBLIC_IP_UNUSABLE),
    (lease(ip="224.0.0.1"), Reason.PUBLIC_IP_UNUSABLE),
    (lease(ip="0.0.0.0"), Reason.PUBLIC_IP_UNUSABLE),
    (lease(ip="255.255.255.255"), Reason.PUBLIC_IP_UNUSABLE),
    (lease(ip="240.0.0.1"), Reason.PUBLIC_IP_UNUSABLE),
    (lease(ip="169.254.169.254"), Reason.PUBLIC_IP_UNUSABLE),
    (lease(ip="10.244.7.3"), Reason.PUBLIC_IP_IN_NETWORK),
    (lease(ip=str(OWN_IP)), Reason.PUBLIC_IP_OWN),
    (lease(mac="00:00:00:00:00:00"), Reason.VTEP_MAC_UNUSABLE),
    (lease(mac="ff:ff:ff:ff:ff:ff"), Reason.VTEP_MAC_UNUSABLE),
    (lease(mac="01:00:5e:00:00:01"), Reason.VTEP_MAC_UNUSABLE),
    (lease(mac=OWN_MAC), Reason.VTEP_MAC_CLAIMED),
    (lease(vni=2), Reason.VNI_MISMATCH),
    (lease(btype="host-gw"), Reason.BACKEND_TYPE),
])
def test_each_rejection_class(candidate, reason):
    v = check_remote(candidate, RULES)
    assert v.reason == reason and v.detail


def test_a_good_lease_is_accepted_and_outside_the_range_only_warned():
    assert check_remote(lease(), RULES).ok and check_remote(lease(), RULES).warning is None
    v = check_remote(lease(i=250), RULES)  # above SubnetMax 10.244.200.0, inside Network
    assert v.ok and v.warning == "outside-range"
    assert check_remote(lease(i=0), RULES).warning == "outside-range"
    # A reservation made before its node ran has no MAC yet: not wrong, just unusable.
    assert check_remote(lease(mac=None), RULES).ok
    assert check_remote(lease(mac=None), RULES).warning == "no-vtep-mac"
    assert check_remote(lease(i=250, mac=None), RULES).warning == "outside-range,no-vtep-mac"


# ---- VTEP MAC claims ------------------------------------------------------------------

A = lease(5, ip="192.168.1.50", mac="0e:aa:aa:aa:aa:aa", created=10)
B = lease(6, ip="192.168.1.66", mac="0e:aa:aa:aa:aa:aa", created=20)  # a thief of A's MAC
A2 = lease(7, ip="192.168.1.50", mac="0e:aa:aa:aa:aa:aa", created=30)  # A's second subnet


def test_mac_claim_in_a_snapshot_goes_to_the_lease_created_first():
    accepted, rejected, _ = judge([B, A2, A], RULES)
    assert {x.subnet for x in accepted} == {A.subnet, A2.subnet}
    assert [(r.subnet, r.reason) for r in rejected] == [(B.subnet, Reason.VTEP_MAC_CLAIMED)]
    view = LeaseView(rules=RULES)
    view.reset([B, A, A2])
    assert set(view.leases) == {A.subnet, A2.subnet}
    assert view.rejected[B.subnet].reason == Reason.VTEP_MAC_CLAIMED


def test_mac_claim_across_events_and_the_loser_takes_over_when_the_holder_goes():
    view = LeaseView(rules=RULES)
    view.reset([A])
    batch = view.apply([LeaseEvent(EventType.ADDED, B, 20)])
    assert not batch and B.subnet in view.rejected  # the thief changes nothing
    batch = view.apply([LeaseEvent(EventType.REMOVED, A, 21)])
    assert [x.subnet for x in batch.removed] == [A.subnet]
    assert [x.subnet for x in batch.added] == [B.subnet] and not view.rejected


def test_a_newer_lease_cannot_steal_by_being_rewritten():
    view = LeaseView(rules=RULES)
    view.reset([A, B])
    b2 = lease(6, ip="192.168.1.77", mac="0e:aa:aa:aa:aa:aa", created=20, mod=40)
    assert not view.apply([LeaseEvent(EventType.ADDED, b2, 40)])
    assert set(view.leases) == {A.subnet}


def test_garbage_put_over_a_lease_removes_it_and_a_rejected_delete_keeps_the_real_one():
    view = LeaseView(rules=RULES)
    view.reset([A])
    rej = Rejection(PREFIX + "10.244.5.0-24", Reason.BAD_VALUE, "x", 50, A.subnet)
    gone = Lease(A.subnet, LeaseAttrs(IPv4Address("0.0.0.0")))
    batch = view.apply([LeaseEvent(EventType.REMOVED, gone, 50, rejection=rej)])
    assert [x.subnet for x in batch.removed] == [A.subnet] and view.rejected[A.subnet] == rej
    view.reset([A])
    bad = lease(6, ip="127.0.0.1")
    view.apply([LeaseEvent(EventType.ADDED, bad, 60)])
    assert B.subnet in view.rejected
    view.apply([LeaseEvent(EventType.REMOVED, bad, 61)])
    assert set(view.leases) == {A.subnet} and not view.rejected


def test_set_rules_judges_again_when_our_subnet_moves():
    rival = lease(1, ip="192.168.1.50", mac="0e:00:00:00:00:50")  # at our subnet
    view = LeaseView(rules=RULES)
    view.reset([rival])
    assert not view.leases and view.rejected[OWN].reason == Reason.OWN_SUBNET
    batch = view.set_rules(RULES.with_own([net(9)]))
    assert [x.subnet for x in batch.added] == [OWN] and not view.rejected


# ---- rendering untrusted keys ---------------------------------------------------------

def test_printable_key_and_etcdctl_del_survive_newlines_and_bad_bytes():
    key = PREFIX + "10.244.5.0-24\n"
    assert printable_key(key) == PREFIX + "10.244.5.0-24\\n"
    assert "\n" not in etcdctl_del(key, "http://127.0.0.1:2379")
    assert etcdctl_del(PREFIX + "10.244.5.0-24", "http://e:2379") == (
        f"ETCDCTL_API=3 etcdctl --endpoints=http://e:2379 del '{PREFIX}10.244.5.0-24'")
    weird = (PREFIX.encode() + b"\xff'").decode("utf-8", "surrogateescape")
    assert "\\377" in etcdctl_del(weird) and "\\047" in etcdctl_del(weird)


def test_the_unrolled_public_ip_check_matches_the_documented_ranges():
    from overlay.lease import _UNUSABLE_IPS, _unusable_ip
    edges = {b + d for lo, hi in _UNUSABLE_IPS for b in (lo, hi) for d in (-1, 0, 1)}
    for ip in sorted(e for e in edges if 0 <= e < 2**32):
        assert _unusable_ip(ip) == any(lo <= ip <= hi for lo, hi in _UNUSABLE_IPS), ip
