"""``ipMasq``: masquerade a pod's traffic leaving the pod network, as the bridge plugin does.

One nat chain per attachment, named from (network, container ID, ifname) so DEL and GC
find it without the pod's address or namespace (the reference plugin leaks it when DEL
comes without a netns).  Applied with one ``iptables-restore --noflush`` batch.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from typing import TYPE_CHECKING

from overlay.cni.skel import ERR_FIREWALL
from overlay.errors import CNIError
from overlay.util import lazylog
from overlay.util.digest import name_digest

if TYPE_CHECKING:
    import subprocess

log = lazylog.get_logger(__name__)


def chain_name(network_name: str, container_id: str, ifname: str) -> str:
    digest = name_digest(network_name, container_id, ifname)
    return "OVERLAY-" + digest[:20]


def _run(args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    # Imported here, only with ipMasq: keeps the in-process plugin's start-up short.
    from overlay.util.proc import ProgramError, run

    try:
        return run(args, input=stdin, timeout=30)
    except ProgramError as e:
        raise CNIError(ERR_FIREWALL, f"cannot run {args[0]}", str(e)) from e


def add_masq(network_name: str, container_id: str, ifname: str, ip: IPv4Address,
             subnet: IPv4Network) -> None:
    chain = chain_name(network_name, container_id, ifname)
    comment = f"overlay {network_name} {container_id[:40]}"
    batch = (f"*nat\n:{chain} - [0:0]\n"
             f"-A {chain} -d {subnet} -j ACCEPT\n"
             f"-A {chain} ! -d 224.0.0.0/4 -j MASQUERADE\n"
             f"-A POSTROUTING -s {ip}/32 -m comment --comment \"{comment}\" -j {chain}\n"
             "COMMIT\n")
    proc = _run(["iptables-restore", "--noflush", "-w"], batch)
    if proc.returncode != 0:
        raise CNIError(ERR_FIREWALL, f"cannot add masquerade rules for {ip}",
                       proc.stderr.strip())
    log.info("ipMasq: added chain %s for %s", chain, ip)


def has_masq(network_name: str, container_id: str, ifname: str) -> bool:
    chain = chain_name(network_name, container_id, ifname)
    proc = _run(["iptables", "-w", "-t", "nat", "-S", "POSTROUTING"])
    return proc.returncode == 0 and f"-j {chain}" in proc.stdout


def del_masq(network_name: str, container_id: str, ifname: str) -> bool:
    """Remove the attachment's jump rule and chain; absent already is success."""
    chain = chain_name(network_name, container_id, ifname)
    listing = _run(["iptables-save", "-t", "nat"])  # the jumps and the chain, in one read
    if listing.returncode != 0:
        raise CNIError(ERR_FIREWALL, "cannot list the nat table", listing.stderr.strip())
    lines = listing.stdout.splitlines()
    jumps = [line for line in lines
             if line.startswith("-A POSTROUTING ") and line.endswith(f"-j {chain}")]
    chain_exists = any(line.startswith(f":{chain} ") for line in lines)
    if not jumps and not chain_exists:
        return False
    batch = "*nat\n" + "".join("-D" + line[2:] + "\n" for line in jumps)
    if chain_exists:
        batch += f"-F {chain}\n-X {chain}\n"
    proc = _run(["iptables-restore", "--noflush", "-w"], batch + "COMMIT\n")
    if proc.returncode != 0:
        raise CNIError(ERR_FIREWALL, f"cannot remove masquerade chain {chain}",
                       proc.stderr.strip())
    log.info("ipMasq: removed chain %s", chain)
    return True
