"""Errno translation in one place, and opening netlink sockets in a namespace."""

from __future__ import annotations

import errno
import logging
import os
from contextlib import contextmanager
from typing import Iterator

from pyroute2 import IPRoute, NetlinkError

from ..errors import NetlinkOpError

log = logging.getLogger(__name__)

# Errnos that mean "already in the state you asked for" when deleting.
GONE = frozenset({errno.ENOENT, errno.ESRCH, errno.ENODEV, errno.EADDRNOTAVAIL})

_MEANING = {
    errno.ENODEV: "link not found",
    errno.ENOENT: "not found",
    errno.ESRCH: "no such entry",
    errno.EEXIST: "already exists",
    errno.EPERM: "operation not permitted (are you root?)",
    errno.EBUSY: "device or resource busy",
    errno.EINVAL: "invalid argument",
    errno.ENETUNREACH: "network unreachable",
    errno.EADDRNOTAVAIL: "address not available",
}


def describe_errno(code: int) -> str:
    return _MEANING.get(code) or os.strerror(code)


@contextmanager
def translated(what: str, ignore_gone: bool = False) -> Iterator[None]:
    """Turn a NetlinkError into NetlinkOpError("<what>: <meaning>").

    With ``ignore_gone``, deleting something that is already gone is success.
    """
    try:
        yield
    except NetlinkError as e:
        if ignore_gone and e.code in GONE:
            log.debug("%s: already gone (%s)", what, describe_errno(e.code))
            return
        raise NetlinkOpError(f"{what}: {describe_errno(e.code)}", e.code) from e


def netns_path(name_or_path: str) -> str:
    return name_or_path if "/" in name_or_path else os.path.join("/var/run/netns", name_or_path)


def open_iproute(netns: str | None = None) -> IPRoute:
    """An IPRoute in ``netns`` (a name under /var/run/netns or a path), never creating it."""
    if netns is None:
        return IPRoute()
    path = netns_path(netns)
    if not os.path.exists(path):
        raise NetlinkOpError(f"network namespace {netns} does not exist", errno.ENOENT)
    try:
        return IPRoute(netns=path, flags=0)
    except NetlinkError as e:
        raise NetlinkOpError(f"cannot open netlink in {netns}: {describe_errno(e.code)}",
                             e.code) from e
    except OSError as e:
        raise NetlinkOpError(f"cannot enter network namespace {netns}: {e.strerror}",
                             e.errno or 0) from e
