"""Connection tracking entries of the pods, read and deleted with conntrack-tools.

The policy table accepts ``ct state established,related`` first, so a connection opened
while a policy allowed it would outlive a change that denies it. After such a change the
agent lists this namespace's entries (``conntrack -L``), judges each one's original
direction by the semantics, and deletes those now denied (``conntrack -D`` with the
entry's exact 5-tuple): their next packet is a new connection, checked by the table.
Both families: ``conntrack -L`` alone lists IPv4 entries only, so IPv6 is listed apart.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import NamedTuple

from overlay.policy.model import IPAddress
from overlay.util.proc import ProgramError, run

log = logging.getLogger(__name__)

PROTOCOLS = {"tcp": "TCP", "udp": "UDP", "sctp": "SCTP"}


class Flow(NamedTuple):
    """An entry's original direction."""
    protocol: str  # TCP | UDP | SCTP
    src: IPv4Address | IPv6Address
    dst: IPv4Address | IPv6Address
    sport: int
    dport: int


def parse_flows(text: str, only: Collection[IPAddress] | None = None) -> list[Flow]:
    """``conntrack -L`` lines as flows (the first src/dst/sport/dport of a line are the
    original direction); lines of other protocols or shapes are skipped, and given
    ``only``, lines naming none of those addresses (not parsed: a busy node's listing
    holds thousands)."""
    marks = None if only is None else tuple(f"={ip} " for ip in only)
    out = []
    for line in text.splitlines():
        if marks is not None and not any(m in line for m in marks):
            continue
        words = line.split()
        if not words or words[0] not in PROTOCOLS:
            continue
        fields: dict[str, str] = {}
        for word in words:
            key, eq, value = word.partition("=")
            if eq and key in ("src", "dst", "sport", "dport") and key not in fields:
                fields[key] = value
        try:
            src, dst = ip_address(fields["src"]), ip_address(fields["dst"])
            if src.version != dst.version:
                continue
            out.append(Flow(PROTOCOLS[words[0]], src, dst, int(fields["sport"]),
                            int(fields["dport"])))
        except (KeyError, ValueError):
            continue
    return out


def list_flows(versions: Iterable[int] = (4, 6), only: Collection[IPAddress] | None = None
               ) -> list[Flow]:
    """This namespace's tracked TCP/UDP/SCTP flows of these IP versions (ProgramError if
    conntrack fails), given ``only`` those whose line names one of these addresses. Each
    listing walks the kernel's whole connection table, every namespace's (about 16 ms of
    system time at 262144 buckets), so a family no local pod has is not listed."""
    return [f for version in sorted(set(versions)) for f in parse_flows(
        run(["conntrack", "-L", "-f", f"ipv{version}"], check=True, timeout=10.0).stdout,
        only)]


def delete_flows(flows: Iterable[Flow]) -> int:
    """Delete each flow's entry; how many went (one already gone is not an error)."""
    gone = 0
    for f in flows:
        try:
            run(["conntrack", "-D", "-f", "ipv6" if f.src.version == 6 else "ipv4",
                 "-p", f.protocol.lower(), "-s", str(f.src), "-d", str(f.dst),
                 "--sport", str(f.sport), "--dport", str(f.dport)], check=True, timeout=10.0)
            gone += 1
        except ProgramError as e:
            log.debug("conntrack -D %s: %s", f, e)
    return gone
