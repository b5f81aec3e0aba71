"""Reservations: a subnet kept for one node forever (a key with no etcd lease).

Policy, like the manager: which reservation is allowed.  A reservation must lie in the
network's range; a node's own lease (same public IP) becomes its reservation; a subnet
held by another node is never taken over (release it first); and a node that already
holds another subnet (a lease or a reservation) is refused, naming it, so one node never
ends up with two subnets.  ``overlayctl leases
reserve|release`` parses and prints; this decides.
"""

from __future__ import annotations

import logging
from ipaddress import IPv6Network
from typing import Protocol

from overlay.config import NetworkConfig
from overlay.errors import ConfigError, LeaseExists, LeaseNotFound
from overlay.lease import IPAddress, IPNetwork, Lease, LeaseAttrs, LeaseRules, check_remote

log = logging.getLogger(__name__)


class ReservationStore(Protocol):
    """The registry methods reservations need (``EtcdRegistry``; ``tests.fakes.FakeRegistry``)."""

    def get_config(self) -> NetworkConfig: ...
    def get_lease(self, subnet: IPNetwork) -> Lease | None: ...
    def list_leases(self, with_expiration: bool = True) -> tuple[list[Lease], int]: ...
    def create_lease(self, subnet: IPNetwork, attrs: LeaseAttrs, ttl: int | None,
                     ipv6_subnet: IPv6Network | None = None) -> Lease: ...
    def update_lease(self, old: Lease, attrs: LeaseAttrs, ttl: int | None) -> Lease: ...
    def delete_lease(self, subnet: IPNetwork, expect_revision: int | None = None,
                     ipv6_subnet: IPv6Network | None = None) -> bool: ...


def reserve(store: ReservationStore, subnet: IPNetwork, public_ip: IPAddress,
            vtep_mac: str | None = None) -> Lease:
    """Reserve ``subnet`` for the node ``public_ip``; its own lease becomes the
    reservation (keeping its VTEP MAC unless one is given)."""
    cfg = store.get_config()
    if not cfg.in_range(subnet):
        raise ConfigError(f"{subnet} is not a subnet of the network's range "
                          f"{cfg.describe_range()}")
    if public_ip.version != subnet.version:  # an IPv6-only network's nodes: IPv6 only
        raise ConfigError(f"--public-ip {public_ip} is IPv{public_ip.version} but the "
                          f"subnet {subnet} is IPv{subnet.version}; give the node's "
                          f"IPv{subnet.version} underlay address")
    attrs = LeaseAttrs(public_ip, vni=cfg.backend.vni, vtep_mac=vtep_mac)
    _refuse_unusable(cfg, subnet, attrs)
    _refuse_second_subnet(store, subnet, public_ip)
    existing = store.get_lease(subnet)
    if existing is None:
        lease = store.create_lease(subnet, attrs, None)
    elif existing.attrs.public_ip == public_ip:
        keep = existing.attrs if vtep_mac is None else attrs
        lease = store.update_lease(existing, keep, None)
    else:
        raise LeaseExists(f"{subnet} is held by {existing.attrs.public_ip}; release it first "
                          f"(`overlayctl leases release {subnet} --yes`)")
    log.info("reserved %s for %s", lease.subnet, lease.attrs.public_ip)
    return lease


def _refuse_unusable(cfg: NetworkConfig, subnet: IPNetwork, attrs: LeaseAttrs) -> None:
    """Refuse a reservation every overlayd would reject: the lease it writes is judged by
    the rule the daemons apply to a remote lease (``check_remote``, no own node here), so
    e.g. a loopback, link-local or multicast public IP, or one inside the pod Network, is
    refused with that rule's reason before anything is written."""
    verdict = check_remote(Lease(subnet, attrs), LeaseRules.from_config(cfg))
    if verdict.reason is None:
        return
    flag = ("--vtep-mac" if "mac" in verdict.reason
            else "--public-ip" if "public-ip" in verdict.reason else "the reservation")
    raise ConfigError(f"{flag}: every node would reject this lease ({verdict.reason}: "
                      f"{verdict.detail}); nothing written")


def _refuse_second_subnet(store: ReservationStore, subnet: IPNetwork,
                          public_ip: IPAddress) -> None:
    """A node holding another subnet would get two: refuse, naming what it holds.

    Flannel's documented conversion is the node's *own* subnet losing its TTL (which
    ``reserve`` does for that subnet); moving a node to another subnet is two steps the
    operator takes knowingly: release the old one, then reserve."""
    leases, _ = store.list_leases(with_expiration=False)
    for held in sorted(leases, key=lambda x: (x.subnet.version, x.subnet)):
        if held.attrs.public_ip == public_ip and held.subnet != subnet:
            what = "a reservation" if held.reserved else "a live lease"
            lease_id = f", etcd lease {held.etcd_lease_id:x}" if held.etcd_lease_id else ""
            raise LeaseExists(
                f"{public_ip} already holds {what} of {held.subnet}{lease_id}; reserve "
                f"that subnet instead (`overlayctl leases reserve {held.subnet} --public-ip "
                f"{public_ip}`), or release it first (`overlayctl leases release "
                f"{held.subnet} --yes`)")


def release(store: ReservationStore, subnet: IPNetwork) -> None:
    """Delete the lease or reservation of ``subnet`` (its holder, if running, re-acquires)."""
    if not store.delete_lease(subnet):
        raise LeaseNotFound(f"no lease or reservation for {subnet} "
                            "(see `overlayctl leases list`)")
    log.info("released %s", subnet)
