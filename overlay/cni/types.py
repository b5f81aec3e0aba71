"""The ADD result, rendered in each cniVersion's format.

- 0.3.0 / 0.3.1 / 0.4.0: ``ips[].version`` is ``"4"`` or ``"6"``.
- 1.0.0: no ``version`` in ``ips``.
- 1.1.0: as 1.0.0, plus ``interfaces[].mtu`` (the SPEC's 1.1 additions).
"""

from __future__ import annotations

from collections.abc import Mapping
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
    ip_address,
    ip_interface,
    ip_network,
)
from typing import Any, NamedTuple

from overlay.errors import CNIError


class Interface(NamedTuple):
    name: str
    mac: str
    sandbox: str = ""
    mtu: int | None = None


IPAddress = IPv4Address | IPv6Address
IPInterface = IPv4Interface | IPv6Interface
IPNetwork = IPv4Network | IPv6Network


class IPConfig(NamedTuple):
    address: IPInterface
    gateway: IPAddress | None
    interface: int


class Route(NamedTuple):
    dst: IPNetwork
    gw: IPAddress | None = None


class Result(NamedTuple):
    interfaces: tuple[Interface, ...]
    ips: tuple[IPConfig, ...]
    routes: tuple[Route, ...] = ()
    dns: Mapping[str, Any] = {}  # never mutated: to_dict copies it

    def to_dict(self, cni_version: str) -> dict[str, Any]:
        legacy = cni_version in ("0.3.0", "0.3.1", "0.4.0")
        interfaces = []
        for i in self.interfaces:
            d: dict[str, Any] = {"name": i.name, "mac": i.mac}
            if i.mtu is not None and cni_version == "1.1.0":
                d["mtu"] = i.mtu
            if i.sandbox:
                d["sandbox"] = i.sandbox
            interfaces.append(d)
        ips = []
        for ip in self.ips:
            d = {"version": str(ip.address.version)} if legacy else {}
            d["interface"] = ip.interface
            d["address"] = str(ip.address)
            if ip.gateway is not None:
                d["gateway"] = str(ip.gateway)
            ips.append(d)
        routes = []
        for r in self.routes:
            d = {"dst": str(r.dst)}
            if r.gw is not None:
                d["gw"] = str(r.gw)
            routes.append(d)
        return {"cniVersion": cni_version, "interfaces": interfaces, "ips": ips,
                "routes": routes, "dns": dict(self.dns)}


def parse_result(data: Any) -> Result:
    """Read a prevResult (any supported version) back into a Result."""
    if not isinstance(data, dict):
        raise CNIError(CNIError.DECODE_FAILURE, "prevResult is not a JSON object")
    try:
        interfaces = tuple(Interface(i["name"], i.get("mac", ""), i.get("sandbox", ""),
                                     i.get("mtu")) for i in data.get("interfaces") or ())
        ips = tuple(IPConfig(ip_interface(_text(ip["address"])),
                             ip_address(_text(ip["gateway"])) if ip.get("gateway") else None,
                             int(ip.get("interface", -1)))
                    for ip in data.get("ips") or ())
        routes = tuple(Route(ip_network(_text(r["dst"])),
                             ip_address(_text(r["gw"])) if r.get("gw") else None)
                       for r in data.get("routes") or ())
        for ip in ips:
            if ip.gateway is not None and ip.gateway.version != ip.address.version:
                raise ValueError(f"gateway {ip.gateway} is not of {ip.address}'s family")
    except (KeyError, TypeError, ValueError) as e:
        raise CNIError(CNIError.DECODE_FAILURE, "prevResult is malformed",
                       f"{type(e).__name__}: {e}") from None
    return Result(interfaces, ips, routes, dict(data.get("dns") or {}))


def _text(value: Any) -> str:
    # ``ipaddress`` would take 167772161 for 10.0.0.1: only the SPEC's strings are addresses
    if not isinstance(value, str):
        raise TypeError(f"{value!r} is not a string")
    return value
