"""The acceptance rule's IPv6 half (issue 14): a bad IPv6 half is rejected alone and the
IPv4 half stays in use; two keys sharing an IPv4 or an IPv6 half: the older one wins."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any

import pytest

from overlay.config import parse_network_config
from overlay.lease import (
    EventType,
    Lease,
    LeaseAttrs,
    LeaseEvent,
    LeaseRules,
    LeaseView,
    Reason,
    check_ipv6,
    ipv4_only,
    ipv6_status,
    judge,
    judge_all,
    lease_key,
)

CFG = parse_network_config({"Network": "10.244.0.0/16", "EnableIPv6": True,
                            "IPv6Network": "fd00:10:244::/56"})
V4ONLY = parse_network_config({"Network": "10.244.0.0/16"})
RULES = LeaseRules.from_config(CFG, (IPv4Network("10.244.1.0/24"),),
                               (IPv4Address("192.168.1.11"),), "0e:00:00:00:00:01"
                               ).with_own_ipv6((IPv6Network("fd00:10:244:1::/64"),),
                                               (IPv6Address("fd00:192:168:1::11"),),
                                               "0e:00:00:00:01:01")


def lease(n: int, v6: int | None = None, rev: int = 0, **attrs6: Any) -> Lease:
    """Node n: 10.244.n.0/24 (+ fd00:10:244:<v6>::/64), 192.168.1.n, MACs ..:0n."""
    fields: dict[str, Any] = {"public_ipv6": IPv6Address(f"fd00:192:168:1::{n}"),
                              "v6_vni": 1, "v6_vtep_mac": f"0e:00:00:00:01:{n:02x}"}
    fields.update(attrs6)
    a = LeaseAttrs(IPv4Address(f"192.168.1.{n}"), vtep_mac=f"0e:00:00:00:00:{n:02x}",
                   **(fields if v6 is not None else {}))
    return Lease(IPv4Network(f"10.244.{n}.0/24"), a, create_revision=rev or n,
                 mod_revision=rev or n,
                 ipv6_subnet=None if v6 is None else IPv6Network(f"fd00:10:244:{v6:x}::/64"))


def test_a_good_dual_stack_lease_is_used_whole():
    j = judge_all([lease(2, 2)], RULES)
    assert j.accepted == [lease(2, 2)] and not j.ipv6_rejected and not j.rejected
    assert ipv6_status(lease(2, 2), RULES, j.ipv6_rejected) == "ok"


@pytest.mark.parametrize("change, reason", [
    ({"public_ipv6": None}, Reason.PUBLIC_IPV6_MISSING),
    ({"public_ipv6": IPv6Address("fe80::2")}, Reason.PUBLIC_IPV6_UNUSABLE),
    ({"public_ipv6": IPv6Address("::1")}, Reason.PUBLIC_IPV6_UNUSABLE),
    ({"public_ipv6": IPv6Address("::ffff:192.168.1.2")}, Reason.PUBLIC_IPV6_UNUSABLE),
    ({"public_ipv6": IPv6Address("ff02::1")}, Reason.PUBLIC_IPV6_UNUSABLE),
    ({"public_ipv6": IPv6Address("fd00:10:244:9::1")}, Reason.PUBLIC_IPV6_IN_NETWORK),
    ({"public_ipv6": IPv6Address("fd00:192:168:1::11")}, Reason.PUBLIC_IPV6_OWN),
    ({"v6_vni": 7}, Reason.V6_VNI_MISMATCH),
    ({"v6_vtep_mac": "01:00:5e:00:00:01"}, Reason.V6_VTEP_MAC_UNUSABLE),
    ({"v6_vtep_mac": "00:00:00:00:00:00"}, Reason.V6_VTEP_MAC_UNUSABLE),
    ({"v6_vtep_mac": "0e:00:00:00:01:01"}, Reason.V6_VTEP_MAC_CLAIMED),
])
def test_a_bad_ipv6_half_is_rejected_alone(change, reason):
    bad = lease(2, 2, **change)
    j = judge_all([bad], RULES)
    assert j.accepted == [ipv4_only(bad)]  # IPv4 stays usable
    assert j.accepted[0].ipv6_subnet is None and j.accepted[0].attrs.public_ipv6 is None
    assert j.accepted[0].attrs.vtep_mac == bad.attrs.vtep_mac
    assert j.ipv6_rejected[bad.subnet].reason == reason and not j.rejected
    assert j.ipv6_rejected[bad.subnet].key == "10.244.2.0-24&fd00:10:244:2::-64"
    assert ipv6_status(bad, RULES, j.ipv6_rejected) == f"rejected: {reason}"


@pytest.mark.parametrize("net, reason", [
    (IPv6Network("fd00:10:245::/64"), Reason.IPV6_SUBNET_OUTSIDE_NETWORK),
    (IPv6Network("fd00:10:244:2::/80"), Reason.IPV6_SUBNET_LENGTH),
    (IPv6Network("fd00:10:244:1::/64"), Reason.IPV6_OWN_SUBNET),
])
def test_an_ipv6_subnet_outside_the_rule_is_rejected_alone(net, reason):
    bad = Lease(lease(2, 2).subnet, lease(2, 2).attrs, ipv6_subnet=net, create_revision=2)
    assert check_ipv6(bad, RULES).reason == reason
    accepted, rejected, _ = judge([bad], RULES)
    assert accepted == [ipv4_only(bad)] and not rejected


def test_a_node_without_ipv6_keeps_ipv4_and_says_why():
    plain = lease(3)  # an IPv4-only key from a node with no IPv6 underlay
    j = judge_all([plain], RULES)
    assert j.accepted == [plain] and not j.ipv6_rejected
    assert ipv6_status(plain, RULES, j.ipv6_rejected) == "none (no IPv6 subnet in its key)"


def test_with_ipv6_off_every_ipv6_half_is_unused():
    rules = LeaseRules.from_config(V4ONLY)
    j = judge_all([lease(2, 2)], rules)
    assert j.accepted == [ipv4_only(lease(2, 2))]
    assert j.ipv6_rejected[lease(2).subnet].reason == Reason.IPV6_NOT_ENABLED


def test_two_leases_with_one_ipv6_subnet_the_older_keeps_it():
    old, new = lease(2, 5, rev=10), lease(3, 5, rev=20)
    j = judge_all([new, old], RULES)
    assert sorted(j.accepted, key=lease_key) == sorted([old, ipv4_only(new)], key=lease_key)
    assert j.ipv6_rejected[new.subnet].reason == Reason.IPV6_SUBNET_CLAIMED
    # the view agrees, and hands the IPv6 half over once the older lease goes away
    view = LeaseView(rules=RULES)
    view.reset([old])
    batch = view.apply([LeaseEvent(EventType.ADDED, new, 20)])
    assert batch.added == (ipv4_only(new),)
    assert view.ipv6_rejected[new.subnet].reason == Reason.IPV6_SUBNET_CLAIMED
    batch = view.apply([LeaseEvent(EventType.REMOVED, old, 30)])
    assert batch.removed == (old,) and batch.changed == ((ipv4_only(new), new),)
    assert not view.ipv6_rejected


def test_a_v6_mac_claimed_by_an_older_lease_of_another_ipv6_is_rejected():
    old = lease(2, 2, rev=10)
    thief = lease(3, 3, rev=20, v6_vtep_mac=old.attrs.v6_vtep_mac)
    j = judge_all([old, thief], RULES)
    assert j.ipv6_rejected[thief.subnet].reason == Reason.V6_VTEP_MAC_CLAIMED
    assert old.subnet not in j.ipv6_rejected


def test_two_keys_with_one_ipv4_subnet_the_older_key_wins_and_the_other_waits():
    plain = lease(4, rev=10)  # 10.244.4.0-24
    dual = lease(4, 4, rev=20)  # 10.244.4.0-24&fd00:10:244:4::-64 (hostile or stale)
    accepted, rejected, _ = judge([dual, plain], RULES)
    assert accepted == [plain]
    assert [(r.key, r.reason) for r in rejected] == [(lease_key(dual), Reason.SUBNET_CLAIMED)]
    view = LeaseView(rules=RULES)
    view.reset([plain])
    assert not view.apply([LeaseEvent(EventType.ADDED, dual, 20)])  # nothing changes
    assert [r.key for r in view.shadow_rejections([plain.subnet])] == [lease_key(dual)]
    batch = view.apply([LeaseEvent(EventType.REMOVED, plain, 30)])
    assert batch.changed == ((plain, dual),) and not view.shadows  # the waiting key takes over


def test_a_rekey_in_one_revision_is_one_change_and_no_removal():
    """DELETE X and PUT X&v6 of one transaction: the same lease, changed (no route flap)."""
    before = lease(5, rev=10)
    after = lease(5, 5, rev=40)
    view = LeaseView(rules=RULES)
    view.reset([before])
    batch = view.apply([LeaseEvent(EventType.REMOVED, Lease(before.subnet, before.attrs), 40),
                        LeaseEvent(EventType.ADDED, after, 40)])
    assert not batch.removed and not batch.added
    assert batch.changed == ((before, after),)
    # a peer without IPv6 sees no change at all: its data plane uses the IPv4 half only
    peer = LeaseView(rules=LeaseRules.from_config(V4ONLY))
    peer.reset([before])
    assert not peer.apply([LeaseEvent(EventType.REMOVED, Lease(before.subnet, before.attrs), 40),
                           LeaseEvent(EventType.ADDED, after, 40)])
