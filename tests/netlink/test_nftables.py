"""The nfnetlink messages of an ADD (``overlay.netlink.nftables``): keys as the kernel
holds them, the attributes' layout, and which admissions only nft's text can say. The
kernel's reading of them (``nft list`` equal to the compiled table, packets judged alike)
is tests/integration/test_policy_admit.py."""

from __future__ import annotations

import errno
import itertools
import struct
import threading
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Network, ip_address

import pytest

from overlay.errors import NetlinkOpError
from overlay.netlink import nftables as nl
from overlay.netlink.rtnl import NLHDR, NLMSG_DONE, attr, attr_str, attrs, cstr
from overlay.policy import nft


def test_keys_fill_one_four_byte_slot_per_part():
    assert nl.key_bytes(nl.ADDRESS, "10.244.1.5") == bytes([10, 244, 1, 5])
    # what nft --debug=netlink shows for 10.244.1.5 . tcp . 8080: 0501f40a 00000006 0000901f
    assert nl.key_bytes(nl.NAMED, "10.244.1.5 . tcp . 8080") == bytes(
        [10, 244, 1, 5, 6, 0, 0, 0, 0x1F, 0x90, 0, 0])
    assert nl.key_bytes(nl.NAMED, "10.0.0.1 . udp . 53")[4] == 17
    v6 = ip_address("fd00:10:244:1::5").packed
    assert nl.key_bytes(nl.ADDRESS6, "fd00:10:244:1::5") == v6
    assert nl.key_bytes(nl.NAMED6, "fd00:10:244:1::5 . udp . 53") == v6 + bytes(
        [17, 0, 0, 0, 0, 53, 0, 0])


@pytest.mark.parametrize("key_type,element", [
    (nl.ADDRESS, "10.0.0.0/24"), (nl.ADDRESS, "10.0.0.1 . tcp . 80"),
    (nl.NAMED, "10.0.0.1 . icmp . 80"), (nl.NAMED, "10.0.0.1 . tcp . 70000"),
    (nl.NAMED, "10.0.0.1"), ("ifname . ipv4_addr", '"v" . 10.0.0.1'),
    (nl.ADDRESS, "fd00::1"), (nl.ADDRESS6, "10.0.0.1"), (nl.NAMED6, "10.0.0.1 . tcp . 80")])
def test_an_element_that_does_not_fit_its_key_is_refused(key_type, element):
    with pytest.raises(ValueError):
        nl.key_bytes(key_type, element)


def test_set_elements_layout():
    body = nl.set_elements("overlay-policy", "p0_sel", nl.ADDRESS, ["10.0.0.1", "10.0.0.2"])
    assert body[:4] == bytes([nl.NFPROTO_INET, 0, 0, 0])
    top = attrs(body, 4)
    assert cstr(top[nl.SET_ELEM_LIST_TABLE]) == "overlay-policy"
    assert cstr(top[nl.SET_ELEM_LIST_SET]) == "p0_sel"
    keys = []
    off, blob = 0, top[nl.SET_ELEM_LIST_ELEMENTS]
    while off < len(blob):
        n = int.from_bytes(blob[off:off + 2], "little")
        elem = attrs(blob, off + 4, off + n)
        keys.append(attrs(elem[nl.SET_ELEM_KEY])[nl.DATA_VALUE])
        off += (n + 3) & ~3
    assert keys == [IPv4Address("10.0.0.1").packed, IPv4Address("10.0.0.2").packed]


def test_the_chain_hooks_one_device_at_the_source_check_priority():
    top = attrs(nl.ingress_chain("overlay-policy", "src_v0", "v0", -500), 4)
    hook = attrs(top[nl.CHAIN_HOOK])
    assert int.from_bytes(hook[nl.HOOK_HOOKNUM], "big") == nl.NF_INET_INGRESS
    assert int.from_bytes(hook[nl.HOOK_PRIORITY], "big", signed=True) == -500
    assert cstr(hook[nl.HOOK_DEV]) == "v0" and cstr(top[nl.CHAIN_TYPE]) == "filter"
    assert int.from_bytes(top[nl.CHAIN_POLICY], "big") == nl.NF_ACCEPT


def _expr_names(exprs: list[bytes]) -> list[str]:
    return [cstr(attrs(attrs(e)[nl.NFTA_LIST_ELEM])[nl.EXPR_NAME]) for e in exprs]


def test_source_rules_are_the_expressions_nft_writes():
    v4, v6 = nl.source_rules(IPv4Address("10.244.1.5"), "spoofed", 7)
    assert _expr_names(v4) == ["meta", "cmp", "meta", "cmp", "payload", "cmp", "objref",
                               "immediate"]
    assert IPv4Address("10.244.1.5").packed in v4[5]  # cmp neq against the pod's address
    assert _expr_names(v6) == ["meta", "cmp", "meta", "cmp", "payload", "lookup", "objref",
                               "immediate"]
    lookup = attrs(attrs(attrs(v6[5])[nl.NFTA_LIST_ELEM])[nl.EXPR_DATA])
    assert int.from_bytes(lookup[nl.LOOKUP_SET_ID], "big") == 7
    assert int.from_bytes(lookup[nl.LOOKUP_FLAGS], "big") == nl.NFT_LOOKUP_F_INV
    no_address, no_ipv6 = nl.source_rules(None, "spoofed", None)
    assert _expr_names(no_address) == ["meta", "cmp", "objref", "immediate"]
    assert _expr_names(no_ipv6) == ["meta", "cmp", "objref", "immediate"]
    assert struct.pack("!H", nl.ETH_P_IPV6) in no_ipv6[1]


# What nft 1.0.6 sent (read with strace, set id 1) for
#   add chain inet overlay-policy src_v0 { type filter hook ingress device "v0" \
#       priority -500; policy accept; }
#   add rule ... src_v0 meta protocol ip ip saddr != 10.244.1.5 counter name "spoofed" drop
#   add rule ... src_v0 meta protocol ip6 ip6 saddr != { ::, fd00:10:244:1::5, fe80::/64 } \
#       counter name "spoofed" drop
# in that order: NEWCHAIN, NEWRULE, NEWSET, NEWSETELEM, NEWRULE (bodies, after nlmsghdr).
NFT_1_0_6 = {
    "chain": (
        "01000000130001006f7665726c61792d706f6c69637900000b0003007372635f763000000b000700"
        "66696c746572000008000500000000011c000480080001000000000508000200fffffe0c07000300"
        "76300000"
    ),
    "rule4": (
        "01000000130001006f7665726c61792d706f6c69637900000b0002007372635f763000005c010480"
        "24000180090001006d6574610000000014000280080002000000000108000100000000012c000180"
        "08000100636d700020000280080001000000000108000200000000000c0003800600010008000000"
        "24000180090001006d6574610000000014000280080002000000000f08000100000000012c000180"
        "08000100636d700020000280080001000000000108000200000000000c0003800500010002000000"
        "340001800c0001007061796c6f616400240002800800010000000001080002000000000108000300"
        "0000000c08000400000000042c00018008000100636d700020000280080001000000000108000200"
        "000000010c000380080001000af40105280001800b0001006f626a72656600001800028008000100"
        "000000010b00020073706f6f66656400300001800e000100696d6d6564696174650000001c000280"
        "0800010000000000100002800c0002800800010000000000"
    ),
    "set": (
        "01000000130001006f7665726c61792d706f6c69637900000c0002005f5f73657425640008000300"
        "000000070800040000000008080005000000001008000a00000000010c0009800800010000000006"
        "26000d000004020000000204010000000314000407000000010c00040d0000000104080000000000"
    ),
    "elements": (
        "01000000130001006f7665726c61792d706f6c69637900000c0002005f5f73657425640008000400"
        "00000001c40003801c00018018000180140001000000000000000000000000000000000024000280"
        "08000300000000011800018014000100000000000000000000000000000000011c00038018000180"
        "14000100fd0000100244000100000000000000052400048008000300000000011800018014000100"
        "fd0000100244000100000000000000061c0005801800018014000100fe8000000000000000000000"
        "000000002400068008000300000000011800018014000100fe800000000000010000000000000000"
    ),
    "rule6": (
        "01000000130001006f7665726c61792d706f6c69637900000b0002007372635f7630000068010480"
        "24000180090001006d6574610000000014000280080002000000000108000100000000012c000180"
        "08000100636d700020000280080001000000000108000200000000000c0003800600010086dd0000"
        "24000180090001006d6574610000000014000280080002000000000f08000100000000012c000180"
        "08000100636d700020000280080001000000000108000200000000000c000380050001000a000000"
        "340001800c0001007061796c6f616400240002800800010000000001080002000000000108000300"
        "000000080800040000000010380001800b0001006c6f6f6b75700000280002800800020000000001"
        "0c0001005f5f73657425640008000400000000010800050000000001280001800b0001006f626a72"
        "656600001800028008000100000000010b00020073706f6f66656400300001800e000100696d6d65"
        "64696174650000001c0002800800010000000000100002800c0002800800010000000000"
    ),
}


def test_the_dual_stack_chain_is_the_batch_nft_sends():
    addresses = [IPv4Address("10.244.1.5"), ip_address("fd00:10:244:1::5")]
    msgs = nl.source_chain_messages("overlay-policy", "src_v0", "v0", -500,
                                    IPv4Address("10.244.1.5"), nft.ipv6_sources(addresses),
                                    "spoofed", 1)
    create, append = nl.NLM_F_CREATE, nl.NLM_F_CREATE | nl.NLM_F_APPEND
    assert [(m[0], m[1]) for m in msgs] == [
        (nl.NFT_MSG_NEWCHAIN, create), (nl.NFT_MSG_NEWRULE, append),
        (nl.NFT_MSG_NEWSET, create), (nl.NFT_MSG_NEWSETELEM, create),
        (nl.NFT_MSG_NEWRULE, append)]
    for (_, _, body), (name, want) in zip(msgs, NFT_1_0_6.items(), strict=True):
        assert body.hex() == "".join(want), name


def test_interval_ends_are_first_and_after_last_flagged_as_end():
    ends = nl.interval_ends([IPv6Network("::/128"), IPv6Network("fe80::/64")])
    assert ends == [(bytes(16), False), ((1).to_bytes(16, "big"), True),
                    (ip_address("fe80::").packed, False),
                    (ip_address("fe80:0:0:1::").packed, True)]


@pytest.mark.parametrize("networks", [
    ["fe80::/64"],  # not from :: (nft would add an end at ::)
    ["::/128", "::1/128"],  # touching: nft merges them
    ["::/128", "fe80::/64", "fe80::5/128"],  # inside: nft merges it
    ["::/128", "fe80::/64", "2001:db8::1/128"],  # unsorted
    ["::/128", "ffff::/16"],  # to the top: nft writes no end
    []])
def test_sets_nft_would_write_otherwise_are_refused(networks):
    with pytest.raises(ValueError):
        nl.interval_ends([IPv6Network(n) for n in networks])


def _adm(elements: tuple[nft.SetElements, ...], addresses: tuple[str, ...] = ("10.0.0.1",)
         ) -> nft.Admission:
    chain = nft.source_chain("veth0", [ip_address(a) for a in addresses])
    return nft.Admission(elements, chain)


CHAIN_MSGS = [nl.NFT_MSG_NEWCHAIN, nl.NFT_MSG_NEWRULE, nl.NFT_MSG_NEWSET,
              nl.NFT_MSG_NEWSETELEM, nl.NFT_MSG_NEWRULE]


@pytest.mark.parametrize("addresses", [
    ("10.0.0.1",), ("10.0.0.1", "fd00::1"), ("fd00::1",), ("fd00::1", "fd00::9"), ()])
def test_the_common_chains_take_the_messages(addresses):
    plain = nft.SetElements("p0_sel", nl.ADDRESS, False, ("10.0.0.1",))
    named = nft.SetElements("p0_i0_named6", nl.NAMED6, False, ("fd00::1 . tcp . 80",))
    msgs = nft._netlink_messages(_adm((plain, named), addresses))
    v6 = [a for a in addresses if ":" in a]
    # every pod's chain lets IPv6 through from its own, link-local and :: sources (a pod
    # without IPv6 too: source_chain writes the set form for it)
    assert msgs is not None and [m[0] for m in msgs] == [
        nl.NFT_MSG_NEWSETELEM, nl.NFT_MSG_NEWSETELEM, *CHAIN_MSGS]
    assert all(m[1] & nl.NLM_F_APPEND for m in msgs if m[0] == nl.NFT_MSG_NEWRULE)
    ends = attrs(attrs(msgs[5][2], 4)[nl.SET_ELEM_LIST_ELEMENTS])
    assert len(ends) == 2 * (len(v6) + 2)  # each /128, ::, fe80::/64: a start and an end


def test_what_only_nft_text_can_say():
    plain = nft.SetElements("p0_sel", nl.ADDRESS, False, ("10.0.0.1",))
    interval = nft.SetElements("p0_e0_peer", nl.ADDRESS, True, ("10.0.0.1",))
    assert nft._netlink_messages(_adm((interval,))) is None
    # two IPv4 addresses: an anonymous set of its own kind, not encoded
    assert nft._netlink_messages(_adm((plain,), ("10.0.0.1", "10.0.0.2"))) is None
    # an own address nft would merge into fe80::/64
    assert nft._netlink_messages(_adm((plain,), ("10.0.0.1", "fe80::5"))) is None
    # rules that are not what source_chain writes for the chain's addresses
    chain = nft.source_chain("veth0", [IPv4Address("10.0.0.1")])
    odd = chain._replace(rules=(chain.rules[0], "meta protocol ip6 counter drop"))
    assert nft._netlink_messages(nft.Admission((plain,), odd)) is None
    assert nft._netlink_messages(nft.Admission((plain,), chain._replace(veth="bad name"))
                                 ) is None
    assert nft._netlink_messages(nft.Admission((), None)) == []


def test_a_withdrawal_deletes_its_elements_then_its_chain():
    plain = nft.SetElements("p0_sel", nl.ADDRESS, False, ("10.0.0.1",))
    named = nft.SetElements("p0_i0_named", nl.NAMED, False, ("10.0.0.1 . tcp . 80",))
    msgs = nft._withdrawal_messages(nft.Withdrawal((plain, named), "src_veth0"))
    assert msgs is not None and [(m[0], m[1]) for m in msgs] == [
        (nl.NFT_MSG_DELSETELEM, 0), (nl.NFT_MSG_DELSETELEM, 0), (nl.NFT_MSG_DELCHAIN, 0)]
    assert msgs[0][2] == nl.set_elements("overlay-policy", "p0_sel", nl.ADDRESS, ["10.0.0.1"])
    chain = attrs(msgs[2][2], 4)
    # the table and the chain's name only: a hook attribute would delete only devices
    assert sorted(chain) == [nl.CHAIN_TABLE, nl.CHAIN_NAME]
    assert cstr(chain[nl.CHAIN_TABLE]) == "overlay-policy"
    assert cstr(chain[nl.CHAIN_NAME]) == "src_veth0"
    assert nft._withdrawal_messages(nft.Withdrawal((), None)) == []
    # an interval set's element, or one not encoded here: nft's text says it
    interval = nft.SetElements("p0_e0_peer", nl.ADDRESS, True, ("10.0.0.1",))
    assert nft._withdrawal_messages(nft.Withdrawal((plain, interval), None)) is None
    odd = nft.SetElements("p0_sel", nl.ADDRESS, False, ("10.0.0.0/24",))
    assert nft._withdrawal_messages(nft.Withdrawal((odd,), None)) is None


class _ScriptedSocket:
    """Replays datagrams a kernel would send for one dump: each script item is a
    function of the request's sequence number, read from what was sent."""

    def __init__(self, script: list[Callable[[int], bytes]]):
        self.script, self.sent = script, list[bytes]()

    def send(self, data: bytes) -> int:
        self.sent.append(data)
        return len(data)

    def recv(self, _size: int) -> bytes:
        seq = struct.unpack_from("=I", self.sent[-1], 8)[0]
        return self.script.pop(0)(seq)


FAM = nl.NFGEN.pack(nl.NFPROTO_INET, 0, 0)


def _msg(kind: int, *attributes: bytes, flags: int = 0, seq_offset: int = 0
         ) -> Callable[[int], bytes]:
    payload = FAM + b"".join(attributes)
    return lambda seq: NLHDR.pack(NLHDR.size + len(payload), nl.NFNL_SUBSYS_NFTABLES << 8 | kind,
                                  flags, seq + seq_offset, 0) + payload


def _rule(table: str, chain: str, **kw: int) -> Callable[[int], bytes]:
    return _msg(nl.NFT_MSG_NEWRULE, attr_str(nl.RULE_TABLE, table),
                attr_str(nl.RULE_CHAIN, chain), **kw)


def _done(code: int = 0) -> Callable[[int], bytes]:
    return lambda seq: NLHDR.pack(NLHDR.size + 4, NLMSG_DONE, 0, seq, 0) + struct.pack(
        "=i", -code)


def _datagram(*parts: Callable[[int], bytes]) -> Callable[[int], bytes]:
    return lambda seq: b"".join(p(seq) for p in parts)


def _scripted(script: list[Callable[[int], bytes]]) -> nl.NftSocket:
    sock = nl.NftSocket.__new__(nl.NftSocket)  # no kernel: the codec alone
    sock.sock = _ScriptedSocket(script)  # type: ignore[assignment]
    sock._seq, sock._lock = itertools.count(7), threading.Lock()
    return sock


RULE_KEYS = (nl.RULE_TABLE, nl.RULE_CHAIN)


def test_a_dump_is_read_to_its_end_past_an_earlier_requests_answer():
    sock = _scripted([_datagram(_rule("overlay-policy", "old", seq_offset=-1),
                                _rule("overlay-policy", "forward")),
                      _datagram(_rule("other", "forward"), _done())])
    got = sock.dump(nl.NFT_MSG_GETRULE, FAM, RULE_KEYS)
    assert [(cstr(g[nl.RULE_TABLE]), cstr(g[nl.RULE_CHAIN])) for g in got] == [
        ("overlay-policy", "forward"), ("other", "forward")]


def test_an_interrupted_dump_is_drained_then_refused():
    script = [_rule("overlay-policy", "forward", flags=nl.NLM_F_DUMP_INTR),
              _rule("overlay-policy", "a"), _done()]
    sock = _scripted(script)
    with pytest.raises(NetlinkOpError, match="changed during a dump"):
        sock.dump(nl.NFT_MSG_GETRULE, FAM, RULE_KEYS)
    assert script == []  # nothing of it is left to refuse the next dump (EBUSY)


def test_a_dump_that_ends_in_an_error_is_refused():
    sock = _scripted([_datagram(_rule("overlay-policy", "forward"), _done(errno.ENOBUFS))])
    with pytest.raises(NetlinkOpError) as e:
        sock.dump(nl.NFT_MSG_GETRULE, FAM, RULE_KEYS)
    assert e.value.code == errno.ENOBUFS


def test_rules_are_counted_per_chain_of_our_table_alone():
    def chain(table: str, name: str) -> Callable[[int], bytes]:
        return _msg(nl.NFT_MSG_NEWCHAIN, attr_str(nl.CHAIN_TABLE, table),
                    attr_str(nl.CHAIN_NAME, name))

    ours = _msg(0, attr_str(nl.TABLE_NAME, "overlay-policy"))
    not_utf8 = _msg(0, attr(nl.TABLE_NAME, b"t\xff\0"))  # another tool's, in any bytes
    sock = _scripted([_datagram(not_utf8, ours, _done()),
                      _datagram(chain("overlay-policy", "forward"),
                                chain("overlay-policy", "empty"), chain("other", "forward"),
                                _done()),
                      _datagram(_rule("overlay-policy", "forward"),
                                _rule("overlay-policy", "forward"), _done())])
    assert sock.rules_per_chain("overlay-policy") == {"forward": 2, "empty": 0}
    assert _scripted([_datagram(not_utf8, _done())]).rules_per_chain("overlay-policy") is None
