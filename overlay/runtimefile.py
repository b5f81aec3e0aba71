"""overlayd's runtime file: the settings a node's overlayd runs with, for overlayctl.

overlayd writes it (default ``/run/overlay/overlayd.json``, root-only: directory 0700
when made, file 0600, replaced atomically) so that ``overlayctl diagnose`` and every
other command on the node need no flags: etcd's endpoints, prefix, TLS files and
username, the password's *file* (never a password), subnet.env, the healthz address,
the CNI socket and dirs, the VXLAN device, the bridge, the node name and version::

    {"kind": "overlayd-runtime", "schema": 1, "version": "0.1.0", "pid": 4242,
     "node_name": "node1",
     "etcd": {"endpoints": ["http://192.168.1.1:2379"], "prefix": "/overlay/network",
              "cafile": null, "certfile": null, "keyfile": null, "username": null,
              "password_file": null},
     "subnet_file": "/run/overlay/subnet.env", "healthz_addr": "127.0.0.1:9099",
     "cni_socket": "/run/overlay/cni.sock", "vxlan_device": "overlay.1",
     "public_ip": "192.168.1.11", "bridge": "cni0",
     "cni_conf_dir": "/etc/cni/net.d", "cni_bin_dir": "/opt/cni/bin"}

The file crosses a boundary (anything may have written it), so it is read through one
rule: bounded size, every known field checked, unknown fields ignored (a newer
overlayd may add some), and any problem is one ``ConfigError`` naming the file.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Any, TypeVar

from overlay.cluster.keys import dns_subdomain_problem
from overlay.errors import ConfigError
from overlay.subnet.etcdconf import parse_endpoints
from overlay.util import jsontext
from overlay.util.fsutil import (
    FileTooLarge,
    SmallFileError,
    atomic_write,
    os_reason,
    read_small_file,
)
from overlay.util.ifname import ifname_problem

DEFAULT_RUNTIME_FILE = "/run/overlay/overlayd.json"
KIND = "overlayd-runtime"
SCHEMA = 1
MAX_BYTES = 64 << 10  # the file overlayd writes is well under 2 KiB
MAX_TEXT = 4096  # characters in one string field (a path, an address)
MAX_ENDPOINTS = 64

T = TypeVar("T")
ETCD_FIELDS = ("cafile", "certfile", "keyfile", "username", "password_file")


@dataclass(frozen=True)
class RuntimeInfo:
    """What overlayd runs with; None where it has no such setting (e.g. healthz off)."""

    version: str
    pid: int
    node_name: str
    etcd_endpoints: tuple[str, ...]
    etcd_prefix: str
    subnet_file: str
    cni_conf_dir: str
    cni_bin_dir: str
    etcd_cafile: str | None = None
    etcd_certfile: str | None = None
    etcd_keyfile: str | None = None
    etcd_username: str | None = None
    etcd_password_file: str | None = None
    healthz_addr: str | None = None
    cni_socket: str | None = None
    vxlan_device: str | None = None
    public_ip: IPv4Address | None = None
    bridge: str | None = None
    policy_log_denied: bool = False  # compile_table(..., log_denied=) as overlayd does

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": KIND, "schema": SCHEMA, "version": self.version, "pid": self.pid,
            "node_name": self.node_name,
            "etcd": {"endpoints": list(self.etcd_endpoints), "prefix": self.etcd_prefix,
                     **{f: getattr(self, "etcd_" + f) for f in ETCD_FIELDS}},
            "subnet_file": self.subnet_file, "healthz_addr": self.healthz_addr,
            "cni_socket": self.cni_socket, "vxlan_device": self.vxlan_device,
            "public_ip": None if self.public_ip is None else str(self.public_ip),
            "bridge": self.bridge, "cni_conf_dir": self.cni_conf_dir,
            "cni_bin_dir": self.cni_bin_dir, "policy_log_denied": self.policy_log_denied,
        }

    def etcd_flags(self) -> dict[str, str | None]:
        """The etcd settings by ``make_etcd_options``' keywords."""
        return {"endpoints": ",".join(self.etcd_endpoints), "prefix": self.etcd_prefix,
                **{f: getattr(self, "etcd_" + f) for f in ETCD_FIELDS}}


def write_runtime_file(path: str, info: RuntimeInfo) -> None:
    """Atomically, root-only: it names key files and the password file."""
    atomic_write(path, json.dumps(info.to_dict(), indent=2) + "\n", mode=0o600, dir_mode=0o700)


def load_runtime_file(path: str) -> RuntimeInfo:
    """Read and validate ``path``; ConfigError (one line naming the file) otherwise."""
    try:
        raw = read_small_file(path, MAX_BYTES)  # a FIFO or device planted there: refused
    except FileTooLarge:
        raise ConfigError(f"runtime file {path}: larger than {MAX_BYTES} bytes; overlayd "
                          "writes a small JSON file here") from None
    except SmallFileError as e:
        raise ConfigError(f"runtime file {path}: {e}") from None
    except OSError as e:
        raise ConfigError(f"runtime file {path}: cannot read it ({os_reason(e)})") from None
    return parse_runtime(raw, path)


def parse_runtime(raw: bytes, source: str = "runtime file") -> RuntimeInfo:
    """The one rule for the runtime file's content."""
    try:
        obj = jsontext.loads(raw.decode("utf-8"))
    except ValueError as e:
        raise ConfigError(f"runtime file {source}: not JSON ({e})") from e
    try:
        return _parse_obj(obj)
    except _Bad as e:
        raise ConfigError(f"runtime file {source}: {e}; restart overlayd to rewrite it, or "
                          "pass --runtime-file '' to ignore it") from None


class _Bad(Exception):
    """One field's problem, before the file's name is added."""


def _parse_obj(obj: Any) -> RuntimeInfo:
    if not isinstance(obj, dict) or obj.get("kind") != KIND:
        raise _Bad(f"not an overlayd runtime file (no \"kind\": \"{KIND}\")")
    schema = obj.get("schema")
    if not isinstance(schema, int) or isinstance(schema, bool) or schema < 1:
        raise _Bad(f"schema {schema!r}: expected a whole number >= 1")
    etcd = obj.get("etcd")
    if not isinstance(etcd, dict):
        raise _Bad("etcd: expected an object")
    endpoints = etcd.get("endpoints")
    if (not isinstance(endpoints, list) or not 1 <= len(endpoints) <= MAX_ENDPOINTS):
        raise _Bad(f"etcd.endpoints: expected a list of 1..{MAX_ENDPOINTS} URLs")
    for ep in endpoints:
        _text(ep, "etcd.endpoints[]")
        try:
            parse_endpoints(ep)
        except ConfigError as e:
            raise _Bad(f"etcd.endpoints: {e}") from None
    pid = obj.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid < 1:
        raise _Bad(f"pid {pid!r}: expected a process id")
    node_name = _text(obj.get("node_name"), "node_name")
    problem = dns_subdomain_problem(node_name)
    if problem:
        raise _Bad(f"node_name {node_name!r}: {problem}")
    return RuntimeInfo(
        version=_text(obj.get("version"), "version"), pid=pid, node_name=node_name,
        etcd_endpoints=tuple(endpoints), etcd_prefix=_text(etcd.get("prefix"), "etcd.prefix"),
        subnet_file=_path(obj.get("subnet_file"), "subnet_file"),
        cni_conf_dir=_path(obj.get("cni_conf_dir"), "cni_conf_dir"),
        cni_bin_dir=_path_list(obj.get("cni_bin_dir"), "cni_bin_dir"),
        etcd_cafile=_opt(_path, etcd.get("cafile"), "etcd.cafile"),
        etcd_certfile=_opt(_path, etcd.get("certfile"), "etcd.certfile"),
        etcd_keyfile=_opt(_path, etcd.get("keyfile"), "etcd.keyfile"),
        etcd_username=_opt(_text, etcd.get("username"), "etcd.username"),
        etcd_password_file=_opt(_path, etcd.get("password_file"), "etcd.password_file"),
        healthz_addr=_opt(_hostport, obj.get("healthz_addr"), "healthz_addr"),
        cni_socket=_opt(_path, obj.get("cni_socket"), "cni_socket"),
        vxlan_device=_opt(_ifname, obj.get("vxlan_device"), "vxlan_device"),
        public_ip=_opt(_ipv4, obj.get("public_ip"), "public_ip"),
        bridge=_opt(_ifname, obj.get("bridge"), "bridge"),
        policy_log_denied=_flag(obj.get("policy_log_denied", False), "policy_log_denied"),
    )


def _flag(value: Any, name: str) -> bool:
    """A boolean; absent (a file an older overlayd wrote) is False."""
    if not isinstance(value, bool):
        raise _Bad(f"{name} {value!r}: expected true or false")
    return value


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise _Bad(f"{name}: expected a non-empty string")
    if len(value) > MAX_TEXT:
        raise _Bad(f"{name}: longer than {MAX_TEXT} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise _Bad(f"{name}: contains control characters")
    return value


def _path(value: Any, name: str) -> str:
    text = _text(value, name)
    if not text.startswith("/"):
        raise _Bad(f"{name} {text!r}: expected an absolute path")
    return text


def _path_list(value: Any, name: str) -> str:
    """A colon-separated list of absolute paths (like CNI_PATH)."""
    text = _text(value, name)
    for part in text.split(":"):
        _path(part, name)
    return text


def _hostport(value: Any, name: str) -> str:
    text = _text(value, name)
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise _Bad(f"{name} {text!r}: expected HOST:PORT")
    return text


def _ifname(value: Any, name: str) -> str:
    text = _text(value, name)
    problem = ifname_problem(text)
    if problem:
        raise _Bad(f"{name} {text!r}: not an interface name (it {problem})")
    return text


def _ipv4(value: Any, name: str) -> IPv4Address:
    text = _text(value, name)
    try:
        return IPv4Address(text)
    except ValueError:
        raise _Bad(f"{name} {text!r}: not an IPv4 address") from None


def _opt(parse: Callable[[Any, str], T], value: Any, name: str) -> T | None:
    """An optional field: null (or absent) is None, anything else must parse."""
    return None if value is None else parse(value, name)
