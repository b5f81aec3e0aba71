"""Which gone lease keys take their subnet's pods out of the registry: a lease re-keyed
(a dual-stack lease gaining, losing or moving its IPv6 half) keeps them."""

from ipaddress import IPv4Network

from overlay.daemon.podpublisher import gone_subnets

BASE = "/overlay/network/subnets/"


def test_a_rekeyed_lease_keeps_its_subnet_and_a_gone_one_does_not():
    old, new = f"{BASE}10.244.2.0-24", f"{BASE}10.244.2.0-24&fd00:10:244:2::-64"
    gone = f"{BASE}10.244.3.0-24&fd00:10:244:3::-64"
    got = gone_subnets([old, gone], [new, f"{BASE}10.244.1.0-24"], BASE, lambda key: None)
    assert got == [IPv4Network("10.244.3.0/24")]


def test_a_key_back_before_the_grace_ended_is_not_gone():
    key = f"{BASE}10.244.3.0-24"
    assert gone_subnets([key], [], BASE, lambda k: b"value") == []
    assert gone_subnets([f"{BASE}not-a-key"], [], BASE, lambda k: None) == []
