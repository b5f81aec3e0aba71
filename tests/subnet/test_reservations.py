"""Reservation policy (``overlayctl leases reserve|release`` decide nothing themselves)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest

from overlay.errors import ConfigError, LeaseExists, LeaseNotFound
from overlay.lease import LeaseAttrs
from overlay.subnet import reservations
from tests.fakes import FakeRegistry

NET = IPv4Network("10.244.7.0/24")
NODE = IPv4Address("192.168.1.11")
OTHER = IPv4Address("192.168.1.12")


def test_a_free_subnet_becomes_a_reservation_with_the_network_vni():
    reg = FakeRegistry(b'{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "VNI": 4}}')
    lease = reservations.reserve(reg, NET, NODE, "0e:00:00:00:00:0b")
    assert lease.reserved and reg.leases[NET].reserved
    assert lease.attrs == LeaseAttrs(NODE, vni=4, vtep_mac="0e:00:00:00:00:0b")


def test_the_nodes_own_lease_becomes_its_reservation_keeping_its_mac():
    reg = FakeRegistry()
    held = reg.put(NET, LeaseAttrs(NODE, vtep_mac="0e:00:00:00:00:aa"), ttl=600)
    assert not held.reserved
    lease = reservations.reserve(reg, NET, NODE)
    assert lease.reserved and lease.attrs.vtep_mac == "0e:00:00:00:00:aa"
    again = reservations.reserve(reg, NET, NODE, "0e:00:00:00:00:bb")
    assert again.attrs.vtep_mac == "0e:00:00:00:00:bb"


def test_another_nodes_subnet_is_never_taken_over():
    reg = FakeRegistry()
    held = reg.put(NET, LeaseAttrs(OTHER), ttl=600)
    with pytest.raises(LeaseExists, match=r"held by 192.168.1.12; release it first"):
        reservations.reserve(reg, NET, NODE)
    assert reg.leases[NET] == held


@pytest.mark.parametrize("subnet", ["10.245.1.0/24", "10.244.0.0/24", "10.244.1.0/25"])
def test_outside_the_range_is_refused_and_nothing_written(subnet):
    reg = FakeRegistry(b'{"Network": "10.244.0.0/16", "SubnetMin": "10.244.1.0"}')
    with pytest.raises(ConfigError, match="is not a subnet of the network's range"):
        reservations.reserve(reg, IPv4Network(subnet), NODE)
    assert reg.leases == {} and reg.creates == 0


def test_release_deletes_and_a_missing_subnet_is_an_error():
    reg = FakeRegistry()
    reservations.reserve(reg, NET, NODE)
    reservations.release(reg, NET)
    assert reg.leases == {}
    with pytest.raises(LeaseNotFound, match="no lease or reservation for 10.244.7.0/24"):
        reservations.release(reg, NET)


@pytest.mark.parametrize("ttl, what", [(600, "a live lease"), (None, "a reservation")])
def test_a_node_holding_another_subnet_is_refused_naming_it(ttl, what):
    reg = FakeRegistry()
    held = reg.put(IPv4Network("10.244.3.0/24"), LeaseAttrs(NODE), ttl=ttl)
    before = dict(reg.leases)
    with pytest.raises(LeaseExists) as e:
        reservations.reserve(reg, NET, NODE)
    msg = str(e.value)
    assert msg.startswith(f"192.168.1.11 already holds {what} of 10.244.3.0/24")
    assert "overlayctl leases reserve 10.244.3.0/24 --public-ip 192.168.1.11" in msg
    assert "overlayctl leases release 10.244.3.0/24 --yes" in msg
    assert (f"etcd lease {held.etcd_lease_id:x}" in msg) == (ttl is not None)
    assert reg.leases == before and reg.creates == 0


def test_another_nodes_lease_elsewhere_does_not_block_a_reservation():
    reg = FakeRegistry()
    reg.put(IPv4Network("10.244.3.0/24"), LeaseAttrs(OTHER), ttl=600)
    assert reservations.reserve(reg, NET, NODE).reserved


@pytest.mark.parametrize("public_ip, mac, flag", [
    ("127.0.0.1", None, "--public-ip"), ("169.254.1.1", None, "--public-ip"),
    ("10.244.3.3", None, "--public-ip"),  # inside the pod Network
    ("192.168.1.11", "01:00:5e:00:00:01", "--vtep-mac")])  # a multicast MAC
def test_a_reservation_every_node_would_reject_is_refused_here(public_ip, mac, flag):
    """The rule the daemons apply to a remote lease, applied by the policy itself (not
    only by the CLI), before anything is written."""
    reg = FakeRegistry()
    with pytest.raises(ConfigError, match=rf"^{flag}: every node would reject this lease"):
        reservations.reserve(reg, NET, IPv4Address(public_ip), mac)
    assert NET not in reg.leases
