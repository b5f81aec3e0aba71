"""One error tree for the whole project.

Entry points catch ``OverlayError`` and print its message as one line; anything
else is a bug.  Foreign exceptions are translated at the edge with ``raise ... from``.
"""

from __future__ import annotations

from typing import Any


class OverlayError(Exception):
    """Base of every error a user can cause or see."""


class ConfigError(OverlayError):
    """Invalid network config, flag, or CNI config."""


class RegistryError(OverlayError):
    """The etcd registry failed (unreachable, refused, malformed data)."""


class EtcdUnavailable(RegistryError):
    """No etcd endpoint answered."""


class ConfigNotFound(RegistryError):
    """The network config key does not exist in etcd yet."""


class LeaseExists(RegistryError):
    """A create-if-absent lost: the subnet key already exists."""


class LeaseConflict(RegistryError):
    """A revision-checked update lost: the key changed (or vanished) since it was read."""


class LeaseNotFound(RegistryError):
    """The subnet has no lease or reservation."""


class NoFreeSubnet(OverlayError):
    """Every subnet of the network's range is leased or reserved."""


class SubnetEnvError(OverlayError):
    """subnet.env is missing or malformed."""


class NetlinkOpError(OverlayError):
    """A netlink operation failed; ``code`` is the errno."""

    def __init__(self, msg: str, code: int = 0):
        super().__init__(msg)
        self.code = code


class IPAMError(OverlayError):
    """IP address management failed (exhausted range, bad request, store error)."""


class CNIError(OverlayError):
    """An error reported to the container runtime as CNI error JSON."""

    # Codes from the CNI SPEC (1.1.0), "Error" section.
    INCOMPATIBLE_VERSION = 1
    UNSUPPORTED_FIELD = 2
    UNKNOWN_CONTAINER = 3
    INVALID_ENV = 4
    IO_FAILURE = 5
    DECODE_FAILURE = 6
    INVALID_CONFIG = 7
    TRY_AGAIN = 11
    NOT_AVAILABLE = 50
    LIMITED_CONNECTIVITY = 51

    def __init__(self, code: int, msg: str, details: str = ""):
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def to_dict(self, cni_version: str) -> dict[str, Any]:
        out = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out


class LeaseValueTooLarge(RegistryError):
    """A lease value in etcd is larger than any lease could be (hostile or corrupt)."""
