"""IP masquerade for pod traffic leaving the pod network (``--ip-masq``), with nftables.

Why nftables rather than iptables: the whole rule set lives in a table of our own
(``ip overlay``), replaced in ONE atomic transaction (``nft -f``), so there is never a
moment with half the rules, never a duplicate rule after a restart, nothing of anybody
else's is touched, and "restore if removed" is a compare-and-replace of one table.
(On this kind of machine iptables is itself the nft backend, so nothing is gained by
going through it; Flannel's iptables rules were the model for the ones below.)

Rules (Flannel's, in order):

1. pod network -> pod network: RETURN (pod-to-pod is never NATed);
2. pod network -> multicast: RETURN;
3. pod network -> elsewhere: MASQUERADE (fully random ports);
4. outside -> this node's subnet: RETURN (traffic to our pods keeps its source);
5. outside -> pod network: MASQUERADE (e.g. node-to-remote-pod, so replies route back).

A dual-stack node has the same five rules for IPv6 in a table of the same name in the
``ip6`` family (``ip6 overlay``; multicast is ff00::/8), installed, checked and restored
the same way, in a transaction of its own; it is removed when IPv6 goes away.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from ipaddress import IPv4Network, IPv6Network

from overlay.errors import ConfigError, OverlayError
from overlay.util import proc
from overlay.util.proc import ProgramError

log = logging.getLogger(__name__)

TABLE = "overlay"
CHAIN = "postrouting"
NFT = shutil.which("nft") or "/usr/sbin/nft"


COMMENTS = ("pod-to-pod, no NAT", "multicast", "pods to outside", "to local pods",
            "to remote pods")


def ruleset(network: IPv4Network | IPv6Network, subnet: IPv4Network | IPv6Network) -> str:
    """The table as one ``nft -f`` script that first drops any old version of it: the
    ``ip`` table for IPv4 networks, the ``ip6`` one for IPv6 networks."""
    family, multicast = ("ip6", "ff00::/8") if network.version == 6 else ("ip", "224.0.0.0/4")
    rules = [
        f'{family} saddr {network} {family} daddr {network} return'
        ' comment "overlay: pod-to-pod, no NAT"',
        f'{family} saddr {network} {family} daddr {multicast} return'
        ' comment "overlay: multicast"',
        f"{family} saddr {network} {family} daddr != {network} masquerade fully-random"
        ' comment "overlay: pods to outside"',
        f'{family} saddr != {network} {family} daddr {subnet} return'
        ' comment "overlay: to local pods"',
        f"{family} saddr != {network} {family} daddr {network} masquerade fully-random"
        ' comment "overlay: to remote pods"',
    ]
    body = "".join(f"    {rule}\n" for rule in rules)
    return f"""table {family} {TABLE}
delete table {family} {TABLE}
table {family} {TABLE} {{
  chain {CHAIN} {{
    type nat hook postrouting priority srcnat; policy accept;
{body}  }}
}}
"""


class Masquerade:
    """Installs, checks and restores the masquerade table (or removes it when disabled)."""

    def __init__(self, network: IPv4Network | None, subnet: IPv4Network | None, enabled: bool):
        # the IPv4 pair is None in an IPv6-only network: no ip table, only ip6's
        self.network = network
        self.subnet = subnet
        self.enabled = enabled
        self._installed = False
        # the IPv6 pod network and this node's IPv6 subnet (set_ipv6); None: no ip6 table
        self.network6: IPv6Network | None = None
        self.subnet6: IPv6Network | None = None
        self._installed6 = False

    def _nft(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        try:
            return proc.run([NFT, *args], input=stdin, timeout=10)
        except ProgramError as e:
            if e.reason == proc.MISSING:
                raise ConfigError("--ip-masq needs the nft program "
                                  "(Debian package nftables)") from e
            if e.reason == proc.TIMEOUT:
                raise OverlayError("nft did not answer within 10 s") from e
            raise

    def current(self, family: str = "ip") -> str | None:
        """The table (of ``family``: ip or ip6) as the kernel has it, or None."""
        r = self._nft("list", "table", family, TABLE)
        return r.stdout if r.returncode == 0 else None

    def intact(self, listing: str | None, family: str = "ip") -> bool:
        network, subnet = ((self.network6, self.subnet6) if family == "ip6"
                           else (self.network, self.subnet))
        if listing is None:
            return False
        want = ["hook postrouting", f"{family} saddr {network} {family} daddr {network} return",
                f"{family} daddr {subnet} return"] + [f'comment "overlay: {c}"' for c in COMMENTS]
        return all(w in listing for w in want) and listing.count("masquerade") == 2

    def ensure(self) -> bool:
        """Make the kernel match the setting; True if something had to change."""
        if not self.enabled and not os.path.exists(NFT):
            return False  # no nft, so no table of ours can exist
        changed = self._ensure("ip", self.network, self.subnet, self.enabled)
        # looked at even without IPv6: a table left by a run that had it is removed
        want6 = self.enabled and self.network6 is not None and self.subnet6 is not None
        return self._ensure("ip6", self.network6, self.subnet6, want6) or changed

    def _ensure(self, family: str, network: IPv4Network | IPv6Network | None,
                subnet: IPv4Network | IPv6Network | None, enabled: bool) -> bool:
        listing = self.current(family)
        if not enabled or network is None or subnet is None:
            return self._remove(family, listing)
        if self.intact(listing, family):
            return False
        r = self._nft("-f", "-", stdin=ruleset(network, subnet))
        if r.returncode != 0:
            raise OverlayError(f"installing the masquerade rules failed: {r.stderr.strip()}")
        installed = self._installed6 if family == "ip6" else self._installed
        log.info("%s the masquerade rules (nftables table %s %s) for %s",
                 "restored" if installed else "installed", family, TABLE, network)
        if family == "ip6":
            self._installed6 = True
        else:
            self._installed = True
        return True

    def _remove(self, family: str, listing: str | None) -> bool:
        if listing is None:
            return False
        r = self._nft("delete", "table", family, TABLE)
        why = ("--ip-masq is off" if not self.enabled else "IPv6 is off" if family == "ip6"
               else "IPv4 is off")
        if r.returncode != 0:  # pods still work; the leftover rules are only extra NAT
            log.warning("%s but removing the leftover nftables table %s %s failed: %s "
                        "(remove it with `nft delete table %s %s`)", why, family, TABLE,
                        r.stderr.strip(), family, TABLE)
            return False
        log.info("%s: removed the nftables table %s %s", why, family, TABLE)
        if family == "ip6":
            self._installed6 = False
        return True

    def update(self, subnet: IPv4Network | None) -> None:
        self.subnet = subnet
        self.ensure()

    def set_ipv6(self, network: IPv6Network | None, subnet: IPv6Network | None) -> None:
        """The IPv6 pod network and this node's IPv6 subnet (both None: no IPv6 half);
        applied by the next ``update``/``ensure``."""
        self.network6, self.subnet6 = network, subnet
