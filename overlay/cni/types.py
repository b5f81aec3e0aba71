"""The ADD result, rendered in each cniVersion's format.

- 0.3.0 / 0.3.1 / 0.4.0: ``ips[].version`` is ``"4"``.
- 1.0.0: no ``version`` in ``ips``.
- 1.1.0: as 1.0.0, plus ``interfaces[].mtu`` (the SPEC's 1.1 additions).
"""

from __future__ import annotations

from collections.abc import Mapping
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any, NamedTuple

from overlay.errors import CNIError


class Interface(NamedTuple):
    name: str
    mac: str
    sandbox: str = ""
    mtu: int | None = None


class IPConfig(NamedTuple):
    address: IPv4Interface
    gateway: IPv4Address | None
    interface: int


class Route(NamedTuple):
    dst: IPv4Network
    gw: IPv4Address | None = None


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
            d = {"version": "4"} if legacy else {}
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
        ips = tuple(IPConfig(IPv4Interface(ip["address"]),
                             IPv4Address(ip["gateway"]) if ip.get("gateway") else None,
                             int(ip.get("interface", -1)))
                    for ip in data.get("ips") or ()
                    if ip.get("version", "4") == "4" and ":" not in ip.get("address", ""))
        routes = tuple(Route(IPv4Network(r["dst"]), IPv4Address(r["gw"]) if r.get("gw") else None)
                       for r in data.get("routes") or () if ":" not in r.get("dst", ""))
    except (KeyError, TypeError, ValueError) as e:
        raise CNIError(CNIError.DECODE_FAILURE, "prevResult is malformed",
                       f"{type(e).__name__}: {e}") from None
    return Result(interfaces, ips, routes, dict(data.get("dns") or {}))
