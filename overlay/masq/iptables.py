"""``ipMasq``: masquerade a pod's traffic leaving the pod network, as the bridge plugin does.

One nat chain per attachment and family, named from (network, container ID, ifname) so
DEL and GC find it without the pod's address or namespace (the reference plugin leaks it
when DEL comes without a netns).  A dual-stack pod's IPv6 address gets the same chain in
ip6tables' nat table: traffic to the cluster's IPv6 network (pod to pod) is accepted
un-NATed, the rest (but multicast) masqueraded.  Each family is one
``iptables-restore --noflush`` / ``ip6tables-restore`` batch.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import TYPE_CHECKING, NamedTuple

from overlay.cni.skel import ERR_FIREWALL
from overlay.errors import CNIError
from overlay.util import lazylog
from overlay.util.digest import name_digest

if TYPE_CHECKING:
    import subprocess

log = lazylog.get_logger(__name__)


class Family(NamedTuple):
    version: int
    tool: str  # iptables / ip6tables; "-save" and "-restore" are its two batch programs
    host_len: int
    multicast: str


FAMILIES = {4: Family(4, "iptables", 32, "224.0.0.0/4"),
            6: Family(6, "ip6tables", 128, "ff00::/8")}


def chain_name(network_name: str, container_id: str, ifname: str) -> str:
    digest = name_digest(network_name, container_id, ifname)
    return "OVERLAY-" + digest[:20]


def _run(args: list[str], stdin: str | None = None,
         missing_ok: bool = False) -> subprocess.CompletedProcess[str] | None:
    # Imported here, only with ipMasq: keeps the in-process plugin's start-up short.
    from overlay.util.proc import MISSING, ProgramError, run

    try:
        return run(args, input=stdin, timeout=30)
    except ProgramError as e:
        if missing_ok and e.reason == MISSING:
            return None  # no such program, so no rule of its family can exist
        raise CNIError(ERR_FIREWALL, f"cannot run {args[0]}", str(e)) from e


def add_masq(network_name: str, container_id: str, ifname: str, ip: IPv4Address | IPv6Address,
             network: IPv4Network | IPv6Network) -> None:
    """Masquerade what ``ip`` sends outside ``network`` (of ``ip``'s family)."""
    fam = FAMILIES[ip.version]
    chain = chain_name(network_name, container_id, ifname)
    comment = f"overlay {network_name} {container_id[:40]}"
    batch = (f"*nat\n:{chain} - [0:0]\n"
             f"-A {chain} -d {network} -j ACCEPT\n"
             f"-A {chain} ! -d {fam.multicast} -j MASQUERADE\n"
             f"-A POSTROUTING -s {ip}/{fam.host_len} -m comment --comment \"{comment}\" "
             f"-j {chain}\nCOMMIT\n")
    proc = _run([f"{fam.tool}-restore", "--noflush", "-w"], batch)
    assert proc is not None, "missing_ok is off: a missing program raised"
    if proc.returncode != 0:
        raise CNIError(ERR_FIREWALL, f"cannot add masquerade rules for {ip}",
                       proc.stderr.strip())
    log.info("ipMasq: added chain %s for %s", chain, ip)


def has_masq(network_name: str, container_id: str, ifname: str, version: int = 4) -> bool:
    chain = chain_name(network_name, container_id, ifname)
    proc = _run([FAMILIES[version].tool, "-w", "-t", "nat", "-S", "POSTROUTING"],
                missing_ok=True)
    return proc is not None and proc.returncode == 0 and f"-j {chain}" in proc.stdout


def del_masq(network_name: str, container_id: str, ifname: str) -> bool:
    """Remove the attachment's jump rules and chains in both families; absent already
    is success (so is a missing ip6tables: it cannot hold a rule)."""
    chain = chain_name(network_name, container_id, ifname)
    removed = [_del_family(fam, chain) for fam in FAMILIES.values()]
    return any(removed)


def _del_family(fam: Family, chain: str) -> bool:
    listing = _run([f"{fam.tool}-save", "-t", "nat"], missing_ok=fam.version == 6)
    if listing is None:
        return False
    if listing.returncode != 0:
        raise CNIError(ERR_FIREWALL, f"cannot list {fam.tool}' nat table",
                       listing.stderr.strip())
    lines = listing.stdout.splitlines()
    jumps = [line for line in lines
             if line.startswith("-A POSTROUTING ") and line.endswith(f"-j {chain}")]
    chain_exists = any(line.startswith(f":{chain} ") for line in lines)
    if not jumps and not chain_exists:
        return False
    batch = "*nat\n" + "".join("-D" + line[2:] + "\n" for line in jumps)
    if chain_exists:
        batch += f"-F {chain}\n-X {chain}\n"
    proc = _run([f"{fam.tool}-restore", "--noflush", "-w"], batch + "COMMIT\n")
    assert proc is not None, "missing_ok is off: a missing program raised"
    if proc.returncode != 0:
        raise CNIError(ERR_FIREWALL, f"cannot remove masquerade chain {chain} ({fam.tool})",
                       proc.stderr.strip())
    log.info("ipMasq: removed chain %s (%s)", chain, fam.tool)
    return True
