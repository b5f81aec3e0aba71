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
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from ipaddress import IPv4Network

from overlay.errors import ConfigError, OverlayError
from overlay.util import proc
from overlay.util.proc import ProgramError

log = logging.getLogger(__name__)

TABLE = "overlay"
CHAIN = "postrouting"
NFT = shutil.which("nft") or "/usr/sbin/nft"


def ruleset(network: IPv4Network, subnet: IPv4Network) -> str:
    """The table as one ``nft -f`` script that first drops any old version of it."""
    rules = [
        f'ip saddr {network} ip daddr {network} return comment "overlay: pod-to-pod, no NAT"',
        f'ip saddr {network} ip daddr 224.0.0.0/4 return comment "overlay: multicast"',
        f"ip saddr {network} ip daddr != {network} masquerade fully-random"
        ' comment "overlay: pods to outside"',
        f'ip saddr != {network} ip daddr {subnet} return comment "overlay: to local pods"',
        f"ip saddr != {network} ip daddr {network} masquerade fully-random"
        ' comment "overlay: to remote pods"',
    ]
    body = "".join(f"    {rule}\n" for rule in rules)
    return f"""table ip {TABLE}
delete table ip {TABLE}
table ip {TABLE} {{
  chain {CHAIN} {{
    type nat hook postrouting priority srcnat; policy accept;
{body}  }}
}}
"""


class Masquerade:
    """Installs, checks and restores the masquerade table (or removes it when disabled)."""

    def __init__(self, network: IPv4Network, subnet: IPv4Network, enabled: bool):
        self.network = network
        self.subnet = subnet
        self.enabled = enabled
        self._installed = False

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

    def current(self) -> str | None:
        """The table as the kernel has it, or None if it does not exist."""
        r = self._nft("list", "table", "ip", TABLE)
        return r.stdout if r.returncode == 0 else None

    def intact(self, listing: str | None) -> bool:
        if listing is None:
            return False
        want = ["hook postrouting", f"ip saddr {self.network} ip daddr {self.network} return",
                f"ip daddr {self.subnet} return"] + [
            f'comment "overlay: {c}"' for c in ("pod-to-pod, no NAT", "multicast",
                                               "pods to outside", "to local pods",
                                               "to remote pods")]
        return all(w in listing for w in want) and listing.count("masquerade") == 2

    def ensure(self) -> bool:
        """Make the kernel match the setting; True if something had to change."""
        if not self.enabled and not os.path.exists(NFT):
            return False  # no nft, so no table of ours can exist
        listing = self.current()
        if not self.enabled:
            if listing is None:
                return False
            r = self._nft("delete", "table", "ip", TABLE)
            if r.returncode != 0:  # pods still work; the leftover rules are only extra NAT
                log.warning("--ip-masq is off but removing the leftover nftables table ip %s "
                            "failed: %s (remove it with `nft delete table ip %s`)", TABLE,
                            r.stderr.strip(), TABLE)
                return False
            log.info("--ip-masq is off: removed the nftables table ip %s", TABLE)
            return True
        if self.intact(listing):
            return False
        r = self._nft("-f", "-", stdin=ruleset(self.network, self.subnet))
        if r.returncode != 0:
            raise OverlayError(f"installing the masquerade rules failed: {r.stderr.strip()}")
        log.info("%s the masquerade rules (nftables table ip %s) for %s",
                 "restored" if self._installed else "installed", TABLE, self.network)
        self._installed = True
        return True

    def update(self, subnet: IPv4Network) -> None:
        self.subnet = subnet
        self.ensure()
