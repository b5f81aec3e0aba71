"""conntrack -L lines as flows: the original direction, other protocols skipped."""

from ipaddress import IPv4Address, IPv6Address

from overlay.policy.conntrack import Flow, parse_flows

LISTING = "\n".join([  # conntrack -L, as this kernel prints it
    "udp      17 29 src=10.244.2.3 dst=10.244.1.3 sport=57300 dport=81 "
    "src=10.244.1.3 dst=10.244.2.3 sport=81 dport=57300 mark=0 use=1",
    "icmp     1 29 src=10.244.1.0 dst=10.244.2.0 type=8 code=0 id=31958 "
    "src=10.244.2.0 dst=10.244.1.0 type=0 code=0 id=31958 mark=0 use=1",
    "tcp      6 431999 ESTABLISHED src=10.244.1.2 dst=10.244.2.2 sport=37258 dport=80 "
    "src=10.244.2.2 dst=10.244.1.2 sport=80 dport=37258 [ASSURED] mark=0 use=1",
    "tcp      6 10 CLOSE src=10.244.1.2 dst=nonsense sport=1 dport=2",
    "conntrack v1.4.7 (conntrack-tools): 3 flow entries have been shown."])


def test_flows_keep_the_original_direction_only() -> None:
    assert parse_flows(LISTING) == [
        Flow("UDP", IPv4Address("10.244.2.3"), IPv4Address("10.244.1.3"), 57300, 81),
        Flow("TCP", IPv4Address("10.244.1.2"), IPv4Address("10.244.2.2"), 37258, 80)]


def test_ipv6_flows_are_read_and_mixed_families_skipped() -> None:
    listing = ("tcp      6 431999 ESTABLISHED src=fd00:10:244:1::2 dst=fd00:10:244:2::3 "
               "sport=40000 dport=80 src=fd00:10:244:2::3 dst=fd00:10:244:1::2 sport=80 "
               "dport=40000 [ASSURED] mark=0 use=1\n"
               "udp      17 29 src=fd00::1 dst=10.0.0.1 sport=1 dport=2\n")
    assert parse_flows(listing) == [Flow("TCP", IPv6Address("fd00:10:244:1::2"),
                                         IPv6Address("fd00:10:244:2::3"), 40000, 80)]


def test_only_the_lines_naming_an_address_are_read() -> None:
    """An ADD's cut: the flows of its pod's addresses alone (whole tokens: 10.244.1.2
    is not 10.244.1.20), in either direction of the entry."""
    listing = LISTING + "\n" + (
        "tcp      6 431999 ESTABLISHED src=10.244.1.20 dst=10.244.2.2 sport=1 dport=80 "
        "src=10.244.2.2 dst=10.244.1.20 sport=80 dport=1 [ASSURED] mark=0 use=1")
    assert parse_flows(listing, [IPv4Address("10.244.1.2")]) == [
        Flow("TCP", IPv4Address("10.244.1.2"), IPv4Address("10.244.2.2"), 37258, 80)]
    assert parse_flows(listing, [IPv4Address("10.244.1.3")]) == [
        Flow("UDP", IPv4Address("10.244.2.3"), IPv4Address("10.244.1.3"), 57300, 81)]
    assert parse_flows(listing, []) == []
    assert len(parse_flows(listing)) == 3
