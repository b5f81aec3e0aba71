"""The nfnetlink messages of an ADD (``overlay.netlink.nftables``): keys as the kernel
holds them, the attributes' layout, and which admissions only nft's text can say. The
kernel's reading of them (``nft list`` equal to the compiled table, packets judged alike)
is tests/integration/test_policy_admit.py."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest

from overlay.netlink import nftables as nl
from overlay.netlink.rtnl import attrs, cstr
from overlay.policy import nft


def test_keys_fill_one_four_byte_slot_per_part():
    assert nl.key_bytes(nl.ADDRESS, "10.244.1.5") == bytes([10, 244, 1, 5])
    # what nft --debug=netlink shows for 10.244.1.5 . tcp . 8080: 0501f40a 00000006 0000901f
    assert nl.key_bytes(nl.NAMED, "10.244.1.5 . tcp . 8080") == bytes(
        [10, 244, 1, 5, 6, 0, 0, 0, 0x1F, 0x90, 0, 0])
    assert nl.key_bytes(nl.NAMED, "10.0.0.1 . udp . 53")[4] == 17


@pytest.mark.parametrize("key_type,element", [
    (nl.ADDRESS, "10.0.0.0/24"), (nl.ADDRESS, "10.0.0.1 . tcp . 80"),
    (nl.NAMED, "10.0.0.1 . icmp . 80"), (nl.NAMED, "10.0.0.1 . tcp . 70000"),
    (nl.NAMED, "10.0.0.1"), ("ifname . ipv4_addr", '"v" . 10.0.0.1')])
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
    v4, v6 = nl.source_rules(IPv4Address("10.244.1.5"), "spoofed")
    assert _expr_names(v4) == ["meta", "cmp", "meta", "cmp", "payload", "cmp", "objref",
                               "immediate"]
    assert IPv4Address("10.244.1.5").packed in v4[5]  # cmp neq against the pod's address
    assert _expr_names(v6) == ["meta", "cmp", "objref", "immediate"]
    no_address, _ = nl.source_rules(None, "spoofed")
    assert _expr_names(no_address) == ["meta", "cmp", "objref", "immediate"]


def _adm(elements: tuple[nft.SetElements, ...], addresses: tuple[str, ...] = ("10.0.0.1",)
         ) -> nft.Admission:
    chain = nft.source_chain("veth0", [IPv4Address(a) for a in addresses])
    return nft.Admission(elements, chain)


def test_what_only_nft_text_can_say():
    plain = nft.SetElements("p0_sel", nl.ADDRESS, False, ("10.0.0.1",))
    named = nft.SetElements("p0_i0_named", nl.NAMED, False, ("10.0.0.1 . tcp . 80",))
    msgs = nft._netlink_messages(_adm((plain, named)))
    assert msgs is not None and [m[0] for m in msgs] == [
        nl.NFT_MSG_NEWSETELEM, nl.NFT_MSG_NEWSETELEM, nl.NFT_MSG_NEWCHAIN,
        nl.NFT_MSG_NEWRULE, nl.NFT_MSG_NEWRULE]
    assert all(m[1] & nl.NLM_F_APPEND for m in msgs if m[0] == nl.NFT_MSG_NEWRULE)
    interval = nft.SetElements("p0_e0_peer", nl.ADDRESS, True, ("10.0.0.1",))
    assert nft._netlink_messages(_adm((interval,))) is None
    assert nft._netlink_messages(_adm((plain,), ("10.0.0.1", "10.0.0.2"))) is None
    assert nft._netlink_messages(nft.Admission((), None)) == []
