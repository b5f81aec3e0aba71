"""Property-based tests of the lease key and value codec and the acceptance rule.

Whatever etcd hands in, decoding returns a lease or a rejection (never raises), and
every accepted remote lies inside the Network, is SubnetLen long and off our subnet.
"""

import contextlib
import json
import os
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from hypothesis import HealthCheck, given, settings, strategies as st

from overlay.config import parse_network_config
from overlay.errors import OverlayError
from overlay.lease import (
    EventType,
    Lease,
    LeaseAttrs,
    LeaseEvent,
    LeaseRules,
    LeaseView,
    Reason,
    decode_kv,
    judge,
    judge_all,
    lease_key,
    parse_key_name,
    subnet_to_key,
)

PREFIX = "/overlay/network/subnets/"
CFG = parse_network_config({"Network": "10.244.0.0/16", "SubnetMin": "10.244.1.0",
                            "SubnetMax": "10.244.100.0"})
OWN = IPv4Network("10.244.1.0/24")
RULES = LeaseRules.from_config(CFG, (OWN,), (IPv4Address("192.168.1.11"),),
                               "0e:00:00:00:00:0b")
# LEASE_EXAMPLES=3000 for a longer search
FAST = settings(max_examples=int(os.environ.get("LEASE_EXAMPLES", "150")), deadline=None,
                database=None,  # no .hypothesis/ left behind
                suppress_health_check=[HealthCheck.too_slow])

octet = st.one_of(st.integers(0, 255).map(str), st.sampled_from(["010", "256", "-1", " 1", ""]))
key_names = st.one_of(
    st.text(max_size=40),
    st.builds(lambda a, b, c, d, plen, tail: f"{a}.{b}.{c}.{d}-{plen}{tail}",
              octet, octet, octet, octet, st.integers(0, 40).map(str),
              st.sampled_from(["", "\n", " ", "/x", "-1", "&fd00::-64"])),
    st.builds(lambda n: subnet_to_key(n), st.integers(0, 255).map(
        lambda i: IPv4Network(f"10.244.{i}.0/24"))),
)
json_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(),
                      st.text(max_size=20))
json_value = st.recursive(json_leaf, lambda c: st.one_of(
    st.lists(c, max_size=4), st.dictionaries(st.text(max_size=8), c, max_size=4)),
    max_leaves=20)
ips = st.one_of(st.integers(0, 2**32 - 1).map(lambda i: str(IPv4Address(i))),
                st.sampled_from(["127.0.0.1", "224.0.0.1", "0.0.0.0", "255.255.255.255",
                                 "10.244.3.4", "192.168.1.11", "169.254.1.1"]),
                json_leaf)
macs = st.one_of(st.builds(lambda b: ":".join(f"{x:02x}" for x in b),
                           st.binary(min_size=6, max_size=6)),
                 st.sampled_from(["00:00:00:00:00:00", "ff:ff:ff:ff:ff:ff",
                                  "0e:00:00:00:00:0b"]), json_leaf)
lease_objs = st.fixed_dictionaries(
    {"PublicIP": ips},
    optional={"BackendType": st.sampled_from(["vxlan", "host-gw", 1, None]),
              "BackendData": st.one_of(json_value, st.fixed_dictionaries(
                  {}, optional={"VNI": st.one_of(st.integers(-2, 2**25), json_leaf),
                                "VtepMAC": macs}))})
values = st.one_of(st.binary(max_size=200), lease_objs.map(lambda o: json.dumps(o).encode()),
                   json_value.map(lambda o: json.dumps(o).encode()))


@FAST
@given(key_names, values)
def test_decode_never_raises_and_keys_round_trip(name, raw):
    got = decode_kv(PREFIX, (PREFIX + name).encode("utf-8", "surrogatepass"), raw)
    if len(got) == 3:
        assert got[0] in (Reason.BAD_KEY, Reason.BAD_VALUE, Reason.VALUE_TOO_LARGE)
        return
    key_name, attrs = got
    assert PREFIX + key_name.encode() == PREFIX + name  # the key is its own encoding
    assert isinstance(attrs, LeaseAttrs)


@FAST
@given(key_names)
def test_key_name_parser_raises_only_value_error(name):
    try:
        parsed = parse_key_name(name)
    except ValueError:
        return
    assert parsed.encode() == name


@FAST
@given(st.binary(max_size=300))
def test_value_decoder_raises_only_the_projects_errors(raw):
    with contextlib.suppress(OverlayError):
        LeaseAttrs.from_json(raw)


def _leases(draw_items):
    out = []
    for i, (name, raw) in enumerate(draw_items):
        got = decode_kv(PREFIX, (PREFIX + name).encode("utf-8", "surrogatepass"), raw)
        if len(got) == 2:
            out.append(Lease(got[0].subnet, got[1], create_revision=i + 1, mod_revision=i + 1,
                             ipv6_subnet=got[0].ipv6))
    return out


def _assert_safe(accepted):
    macs: dict[str, IPv4Address] = {}
    for lease in accepted:
        assert lease.subnet.subnet_of(CFG.network) and lease.subnet.prefixlen == CFG.subnet_len
        assert lease.subnet != OWN
        if lease.attrs.vtep_mac is not None:
            holder = macs.setdefault(lease.attrs.vtep_mac, lease.attrs.public_ip)
            assert holder == lease.attrs.public_ip


subnet_keys = st.one_of(key_names, st.sampled_from(
    ["10.244.1.0-24", "10.244.2.0-24", "10.244.200.0-24", "10.244.2.0-25", "10.245.0.0-24",
     "128.0.0.0-1", "10.244.3.0-24"]))
items = st.lists(st.tuples(subnet_keys, values), max_size=12)


@FAST
@given(items)
def test_every_accepted_remote_is_inside_the_network_sized_and_not_ours(kvs):
    accepted, rejected, _ = judge(_leases(kvs), RULES)
    _assert_safe(accepted)
    subnets = [lease.subnet for lease in accepted]
    assert len(subnets) == len(set(subnets))  # one key per IPv4 subnet is used
    # a subnet is used or rejected, unless a second key of it waits (subnet-claimed)
    assert not set(subnets) & {r.subnet for r in rejected if r.reason != Reason.SUBNET_CLAIMED}


@FAST
@given(items, st.lists(st.tuples(st.booleans(), st.integers(0, 11)), max_size=12))
def test_the_view_agrees_with_judge_over_any_event_sequence(kvs, ops):
    leases = _leases(kvs)
    view = LeaseView(rules=RULES)
    view.reset(leases[: len(leases) // 2])
    # keyed as etcd is: by the whole key (two keys may share an IPv4 subnet)
    current = {lease_key(lease): lease for lease in leases[: len(leases) // 2]}
    for put, i in ops:
        if not leases:
            break
        lease = leases[i % len(leases)]
        if put:
            view.apply([LeaseEvent(EventType.ADDED, lease, lease.mod_revision)])
            current[lease_key(lease)] = lease
        else:
            view.apply([LeaseEvent(EventType.REMOVED, lease, lease.mod_revision)])
            current.pop(lease_key(lease), None)
        _assert_safe(view.leases.values())
    accepted, _, _ = judge(current.values(), RULES)
    assert set(view.leases) == {lease.subnet for lease in accepted}


# ---- dual-stack: the IPv6 half decided alone, the same by the view and by judge_all ----

CFG6 = parse_network_config({"Network": "10.244.0.0/16", "SubnetMin": "10.244.1.0",
                             "SubnetMax": "10.244.100.0", "EnableIPv6": True,
                             "IPv6Network": "fd00:10:244::/56"})
OWN6 = IPv6Network("fd00:10:244:1::/64")
RULES6 = LeaseRules.from_config(CFG6, (OWN,), (IPv4Address("192.168.1.11"),),
                                "0e:00:00:00:00:0b").with_own_ipv6(
    (OWN6,), (IPv6Address("fd00:192:168:1::11"),), "0e:00:00:00:01:0b")
v4_halves = st.sampled_from(["10.244.1.0-24", "10.244.2.0-24", "10.244.3.0-24",
                             "10.244.4.0-24", "10.245.0.0-24"])
v6_halves = st.sampled_from(["", "&fd00:10:244:1::-64", "&fd00:10:244:2::-64",
                             "&fd00:10:244:3::-64", "&fd00:10:244:3::-80", "&fd00:99::-64"])
dual_keys = st.builds(lambda a, b: a + b, v4_halves, v6_halves)
v6_macs = st.sampled_from([None, "0e:00:00:00:01:0b", "0e:00:00:00:01:02",
                           "0e:00:00:00:01:03", "01:00:00:00:00:01"])
dual_values = st.builds(
    lambda ip, ip6, mac, mac6, vni6: json.dumps({
        "PublicIP": ip, "PublicIPv6": ip6, "BackendType": "vxlan",
        "BackendData": {"VNI": 1, "VtepMAC": mac},
        **({"BackendV6Data": {"VNI": vni6, "VtepMAC": mac6}} if mac6 else {})}).encode(),
    st.sampled_from(["192.168.1.12", "192.168.1.13", "192.168.1.14"]),
    st.sampled_from([None, "fd00:192:168:1::12", "fd00:192:168:1::13", "fe80::1",
                     "fd00:10:244:5::1", "fd00:192:168:1::11"]),
    st.sampled_from(["0e:00:00:00:00:02", "0e:00:00:00:00:03", "0e:00:00:00:00:04"]),
    v6_macs, st.sampled_from([1, 1, 1, 2]))
dual_items = st.lists(st.tuples(dual_keys, dual_values), max_size=10)


def _assert_safe_v6(used):
    nets: set[IPv6Network] = set()
    macs: dict[str, IPv6Address] = {}
    assert CFG6.ipv6_network is not None
    for lease in used:
        if lease.ipv6_subnet is None:
            assert lease.attrs.public_ipv6 is None and lease.attrs.v6_vtep_mac is None
            continue
        assert lease.ipv6_subnet.subnet_of(CFG6.ipv6_network)
        assert lease.ipv6_subnet.prefixlen == 64 and lease.ipv6_subnet != OWN6
        assert lease.ipv6_subnet not in nets
        nets.add(lease.ipv6_subnet)
        ip6 = lease.attrs.public_ipv6
        assert ip6 is not None and not ip6.is_link_local and ip6 not in CFG6.ipv6_network
        mac = lease.attrs.v6_vtep_mac
        if mac is not None:
            assert macs.setdefault(mac, ip6) == ip6


@FAST
@given(dual_items, st.lists(st.tuples(st.booleans(), st.integers(0, 9)), max_size=12))
def test_the_view_agrees_with_judge_all_on_both_halves(kvs, ops):
    leases = _leases(kvs)
    view = LeaseView(rules=RULES6)
    current = {lease_key(lease): lease for lease in leases[: len(leases) // 2]}
    batch = view.reset(list(current.values()))
    used = {x.subnet: x for x in batch.added}
    for put, i in ops:
        if not leases:
            break
        lease = leases[i % len(leases)]
        kind = EventType.ADDED if put else EventType.REMOVED
        if put:
            current[lease_key(lease)] = lease
        else:
            current.pop(lease_key(lease), None)
        batch = view.apply([LeaseEvent(kind, lease, lease.mod_revision)])
        for x in batch.removed:
            del used[x.subnet]
        for x in batch.added:
            assert x.subnet not in used
            used[x.subnet] = x
        for old, new in batch.changed:
            assert (used[old.subnet].attrs, used[old.subnet].ipv6_subnet) == (
                old.attrs, old.ipv6_subnet)
            used[new.subnet] = new
        _assert_safe_v6(view.used_leases())
    j = judge_all(current.values(), RULES6)
    _assert_safe_v6(j.accepted)
    # what the batches built is what the view holds is what judge_all says (a batch
    # leaves out a put that changed nothing the data plane uses, e.g. the revision)
    def plane(xs):
        return sorted((x.subnet, x.ipv6_subnet, x.attrs) for x in xs)
    assert plane(used.values()) == plane(view.used_leases())
    assert sorted(j.accepted, key=lease_key) == sorted(view.used_leases(), key=lease_key)
    assert {s: r.reason for s, r in view.ipv6_rejected.items()} == {
        s: r.reason for s, r in j.ipv6_rejected.items()}
