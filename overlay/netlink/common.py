"""Errno translation in one place, and opening netlink sockets in a namespace.

pyroute2 is imported only inside the functions that need it, so importing
``netns_path``, ``describe_errno`` or ``GONE`` from here never loads it (its import
alone costs ~120 ms and ~11 MB of RSS).
"""

from __future__ import annotations

import errno
import logging
import os
import sys
from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator

from overlay.errors import NetlinkOpError
from overlay.netlink.rtnl import GONE, describe_errno

if TYPE_CHECKING:
    from pyroute2 import IPRoute

__all__ = ["GONE", "describe_errno", "netns_path", "open_iproute", "translated"]

log = logging.getLogger(__name__)

def _is_netlink_error(e: BaseException) -> bool:
    # A pyroute2 NetlinkError can only exist once pyroute2 is loaded: look it up
    # there rather than importing pyroute2 for every exception that passes through.
    exc = sys.modules.get("pyroute2.netlink.exceptions")
    return exc is not None and isinstance(e, exc.NetlinkError)


@contextmanager
def translated(what: str, ignore_gone: bool = False) -> Iterator[None]:
    """Turn a NetlinkError into NetlinkOpError("<what>: <meaning>").

    With ``ignore_gone``, deleting something that is already gone is success.
    """
    try:
        yield
    except Exception as e:
        if not _is_netlink_error(e):
            raise
        if ignore_gone and e.code in GONE:
            log.debug("%s: already gone (%s)", what, describe_errno(e.code))
            return
        raise NetlinkOpError(f"{what}: {describe_errno(e.code)}", e.code) from e


def netns_path(name_or_path: str) -> str:
    return name_or_path if "/" in name_or_path else os.path.join("/var/run/netns", name_or_path)


def require_netns(netns: str) -> str:
    """The path of ``netns`` (a name or a path); NetlinkOpError if it does not exist."""
    path = netns_path(netns)
    if not os.path.exists(path):
        raise NetlinkOpError(f"network namespace {netns} does not exist", errno.ENOENT)
    return path


def open_iproute(netns: str | None = None) -> IPRoute:
    """An IPRoute in ``netns`` (a name under /var/run/netns or a path), never creating it."""
    from pyroute2 import IPRoute, NetlinkError

    if netns is None:
        return IPRoute()
    path = require_netns(netns)
    try:
        return IPRoute(netns=path, flags=0)
    except NetlinkError as e:
        raise NetlinkOpError(f"cannot open netlink in {netns}: {describe_errno(e.code)}",
                             e.code) from e
    except OSError as e:
        raise NetlinkOpError(f"cannot enter network namespace {netns}: {e.strerror}",
                             e.errno or 0) from e
