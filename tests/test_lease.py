"""Subnet key codec, lease value JSON, and the pure lease-watch diff."""

import json
from ipaddress import IPv4Address, IPv4Network

import pytest

from overlay.errors import RegistryError
from overlay.lease import (
    EventType,
    Lease,
    LeaseAttrs,
    LeaseBatch,
    LeaseEvent,
    LeaseView,
    diff_leases,
    key_to_subnet,
    normalize_mac,
    parse_subnet_arg,
    subnet_to_key,
)

N1, N2, N3 = (IPv4Network(f"10.244.{i}.0/24") for i in (1, 2, 3))


def attrs(ip="192.168.1.11", mac="0e:00:00:00:00:01", vni=1):
    return LeaseAttrs(IPv4Address(ip), vni=vni, vtep_mac=mac)


def lease(subnet, ip="192.168.1.11", mac="0e:00:00:00:00:01", lease_id=7, rev=1):
    return Lease(subnet, attrs(ip, mac), etcd_lease_id=lease_id, mod_revision=rev)


# -- key codec ------------------------------------------------------------------------

@pytest.mark.parametrize("subnet, key", [
    ("10.244.1.0/24", "10.244.1.0-24"), ("10.0.0.64/26", "10.0.0.64-26"),
    ("172.16.0.0/12", "172.16.0.0-12")])
def test_subnet_key_round_trip(subnet, key):
    net = IPv4Network(subnet)
    assert subnet_to_key(net) == key
    assert key_to_subnet(key) == net
    assert key_to_subnet(f"/coreos.com/network/subnets/{key}",
                         "/coreos.com/network/subnets/") == net


@pytest.mark.parametrize("key", ["10.244.1.0", "10.244.1.0_24", "10.244.1.1-24",
                                 "10.244.1.0-33", "config", "10.244.1.0-24-1", ""])
def test_key_to_subnet_rejects_non_subnet_keys(key):
    with pytest.raises(ValueError):
        key_to_subnet(key)


def test_parse_subnet_arg_accepts_both_forms_and_explains_errors():
    assert parse_subnet_arg("10.244.1.0/24") == N1
    assert parse_subnet_arg("10.244.1.0-24") == N1
    with pytest.raises(ValueError, match="not a subnet"):
        parse_subnet_arg("10.244.1.7/24")
    with pytest.raises(ValueError, match="e.g. 10.244.1.0/24"):
        parse_subnet_arg("banana")


def test_normalize_mac():
    assert normalize_mac("0E-AA-bb-CC-dd-01") == "0e:aa:bb:cc:dd:01"
    with pytest.raises(ValueError):
        normalize_mac("0e:aa:bb")


# -- attrs JSON -----------------------------------------------------------------------

def test_attrs_json_uses_flannel_field_names():
    obj = json.loads(attrs().to_json())
    assert obj == {"PublicIP": "192.168.1.11", "BackendType": "vxlan",
                   "BackendData": {"VNI": 1, "VtepMAC": "0e:00:00:00:00:01"}}


def test_attrs_from_flannel_value_keeps_unknown_backend_data():
    raw = ('{"PublicIP":"10.0.0.5","BackendType":"vxlan","BackendData":'
           '{"VNI":1,"VtepMAC":"AA:BB:CC:DD:EE:FF","Extra":"x"}}')
    a = LeaseAttrs.from_json(raw)
    assert a.public_ip == IPv4Address("10.0.0.5")
    assert a.vtep_mac == "aa:bb:cc:dd:ee:ff"
    assert a.extra == (("Extra", "x"),)
    assert json.loads(a.to_json())["BackendData"]["Extra"] == "x"
    assert LeaseAttrs.from_json(a.to_json()) == a


def test_attrs_without_backend_data():
    a = LeaseAttrs.from_json('{"PublicIP":"10.0.0.5"}')
    assert (a.vni, a.vtep_mac, a.backend_type) == (None, None, "vxlan")


@pytest.mark.parametrize("raw", ["{", "[]", '{"BackendType":"vxlan"}', '{"PublicIP":"x"}',
                                 '{"PublicIP":"10.0.0.1","BackendData":{"VtepMAC":"zz"}}'])
def test_malformed_lease_value_is_a_registry_error(raw):
    with pytest.raises(RegistryError, match="malformed lease value"):
        LeaseAttrs.from_json(raw)


def test_reservation_is_a_lease_without_etcd_lease():
    assert Lease(N1, attrs()).reserved
    assert not lease(N1).reserved
    assert lease(N1).gateway == IPv4Address("10.244.1.1")


# -- diff and view ----------------------------------------------------------------------

def test_diff_added_removed_changed():
    old = {N1: lease(N1), N2: lease(N2, ip="192.168.1.12")}
    new = {N2: lease(N2, ip="192.168.1.12", mac="0e:00:00:00:00:99"), N3: lease(N3)}
    batch = diff_leases(old, new)
    assert [x.subnet for x in batch.added] == [N3]
    assert [x.subnet for x in batch.removed] == [N1]
    assert [(o.attrs.vtep_mac, n.attrs.vtep_mac) for o, n in batch.changed] == [
        ("0e:00:00:00:00:01", "0e:00:00:00:00:99")]


def test_renewal_is_not_a_change():
    old = {N1: lease(N1, lease_id=1, rev=3)}
    new = {N1: lease(N1, lease_id=2, rev=9)}
    assert not diff_leases(old, new)
    assert not LeaseBatch()


def test_view_reset_excludes_own_subnet_and_reports_difference():
    view = LeaseView(own=N1)
    batch = view.reset([lease(N1), lease(N2)])
    assert [x.subnet for x in batch.added] == [N2] and not batch.removed
    assert set(view.leases) == {N2}
    batch = view.reset([lease(N3)])
    assert [x.subnet for x in batch.added] == [N3]
    assert [x.subnet for x in batch.removed] == [N2]


def test_view_apply_events_in_order_gives_net_effect():
    view = LeaseView(own=N1)
    view.reset([lease(N2)])
    events = [
        LeaseEvent(EventType.ADDED, lease(N3), 5),
        LeaseEvent(EventType.REMOVED, lease(N3), 6),  # added then removed: no net effect
        LeaseEvent(EventType.REMOVED, lease(N1), 7),  # own subnet: ignored
        LeaseEvent(EventType.ADDED, lease(N2, mac="0e:00:00:00:00:02"), 8),
    ]
    batch = view.apply(events)
    assert not batch.added and not batch.removed
    assert [n.attrs.vtep_mac for _, n in batch.changed] == ["0e:00:00:00:00:02"]
    assert set(view.leases) == {N2}


def test_view_remove_of_unknown_subnet_is_harmless():
    view = LeaseView()
    assert not view.apply([LeaseEvent(EventType.REMOVED, lease(N3), 2)])
