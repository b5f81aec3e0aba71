"""Stable names from a SHA-256 of their parts (node-side veths, per-pod iptables chains).

The interpreter's own SHA-256 module is used when it has one: ``hashlib`` loads OpenSSL
first, ~3 ms of every in-process CNI call, for the same digest."""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable
from typing import Any


def _sha256() -> Callable[[bytes], Any]:
    for module in ("_sha2", "_sha256"):  # Python 3.12+, 3.11
        with contextlib.suppress(ImportError):
            constructor: Callable[[bytes], Any] = importlib.import_module(module).sha256
            return constructor
    import hashlib  # an interpreter built without them

    return hashlib.sha256


_SHA256 = _sha256()


def name_digest(*parts: str) -> str:
    """The hex SHA-256 of ``parts`` joined by NUL (no part can contain one)."""
    return str(_SHA256("\0".join(parts).encode()).hexdigest())
