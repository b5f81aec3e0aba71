"""The one rule for a Linux interface name (a pure check, no I/O)."""

from __future__ import annotations


def ifname_problem(value: str) -> str | None:
    """What makes ``value`` unusable as a Linux interface name, or None.

    Used for CNI_IFNAME, the CNI config's bridge, install-cni's --bridge and overlayd's
    --vxlan-device, so they all agree."""
    if not value:
        return "is empty"
    if len(value) > 15:
        return f"is {len(value)} characters long (at most 15)"
    if value in (".", ".."):
        return "is '.' or '..'"
    if any(c in "/:" or c.isspace() for c in value):
        return "contains '/', ':' or whitespace"
    return None
