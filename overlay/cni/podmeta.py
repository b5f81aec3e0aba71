"""The per-attachment pod metadata file the plugin writes beside its IPAM record, for
overlayd's pod publisher (``overlay.daemon.podpublisher``) to read off the ADD's path.

The IPAM record (``<dataDir>/<network>/<ip>``) holds only the container ID and ifname;
``<dataDir>/<network>/pods/<container id>@<ifname>.json`` (:func:`meta_file_name`) adds
who the pod is, as the runtime said it::

    {"containerID": "...", "ifname": "eth0", "namespace": "default", "name": "web-1",
     "labels": [{"key": "app", "value": "web"}],
     "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
     "ips": ["10.244.1.5", "fd00:10:244:1::5"]}

``namespace``/``name`` are ``CNI_ARGS`` ``K8S_POD_NAMESPACE``/``K8S_POD_NAME`` (null when
absent: podman passes only the name); ``labels`` the netconf's ``args.cni.labels``;
``ports`` ``args.cni.ports`` or else ``runtimeConfig.portMappings``' container ports;
``ips`` the addresses this ADD gave the attachment, IPv4 first (a dual-stack pod has
two; the IPAM files stay the record of what is reserved).

The plugin checks only shape and size here (plain types, bounded counts and lengths), so
an ADD imports nothing more than ``json``: the one rule for each part (DNS-1123 names,
Kubernetes label syntax, ports) is applied by the reader, ``overlay.cni.attachments.parse_meta``,
which drops a bad part alone. The directory name is not an IPv4 address, so the IPAM
store (ours and host-local's) ignores it. Writes are atomic (temp + rename) without fsync:
the file matters only while the pod's network namespace exists, which no reboot keeps.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

from overlay.util.digest import name_digest
from overlay.util.fsutil import atomic_write

META_DIR = "pods"
SUFFIX = ".json"
MAX_ITEMS = 64  # labels, ports
MAX_TEXT = 320  # a label key (253 + '/' + 63), a name (253)
# Whatever meta_from_request keeps of printable ASCII fits (64 labels and 64 ports of
# MAX_TEXT-long strings: about 87 KB); write_meta refuses a larger file (escapes of other
# characters inflate it), so the reader never drops a pod's identity for its size.
MAX_META_BYTES = 128 * 1024
# NAME_MAX (255) less what atomic_write's temporary name adds ('.' and '.' + 16 hex).
MAX_FILE_NAME = 255 - 18


class MetaTooLarge(ValueError):
    """The pod's metadata would not fit MAX_META_BYTES."""


def meta_dir(data_dir: str, network: str) -> str:
    return os.path.join(data_dir, network, META_DIR)


def meta_file_name(container_id: str, ifname: str) -> str:
    """``<container id>@<ifname>.json``, or for a name too long for Linux (a container ID
    of more than about 215 of its 256 characters) ``<SHA-256 of both>.json``: the reader
    derives the name the same way, and the file's ``containerID`` says whose it is."""
    # '@' never occurs in a container ID (its rule), so a plain name is unambiguous, and a
    # digest's name, without '@', is never one.
    name = f"{container_id}@{ifname}{SUFFIX}"
    if len(name.encode()) <= MAX_FILE_NAME:
        return name
    return name_digest(container_id, ifname) + SUFFIX


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and 0 < len(value) <= MAX_TEXT else None


def _scalars(item: object, fields: tuple[str, ...]) -> dict[str, Any] | None:
    """``item``'s known fields if it is an object of short strings and integers."""
    if not isinstance(item, dict):
        return None
    out = {k: item[k] for k in fields if k in item}
    ok = all((isinstance(v, str) and len(v) <= MAX_TEXT)
             or (isinstance(v, int) and not isinstance(v, bool)) for v in out.values())
    return out if ok else None


def _items(raw: object, fields: tuple[str, ...]) -> list[dict[str, Any]]:
    if not isinstance(raw, list):
        return []
    kept = (_scalars(item, fields) for item in raw[:MAX_ITEMS])
    return [item for item in kept if item]


def _cni_args(config: Mapping[str, Any]) -> Mapping[str, Any]:
    args = config.get("args")
    cni = args.get("cni") if isinstance(args, dict) else None
    return cni if isinstance(cni, dict) else {}


def _ports(config: Mapping[str, Any]) -> list[dict[str, Any]]:
    declared = _cni_args(config).get("ports")
    if declared is not None:
        return _items(declared, ("name", "port", "protocol"))
    runtime = config.get("runtimeConfig")
    mappings = runtime.get("portMappings") if isinstance(runtime, dict) else None
    return [{"port": m["containerPort"], "protocol": m.get("protocol", "tcp")}
            for m in _items(mappings, ("containerPort", "protocol")) if "containerPort" in m]


def meta_from_request(container_id: str, ifname: str, args: Mapping[str, str],
                      config: Mapping[str, Any], ips: Iterable[object] = ()) -> dict[str, Any]:
    """The file's content for one ADD: the runtime's words, shape-checked and bounded,
    and the addresses the ADD gave (``ips``: our own allocation, not the runtime's)."""
    return {"containerID": container_id, "ifname": ifname,
            "namespace": _text(args.get("K8S_POD_NAMESPACE")),
            "name": _text(args.get("K8S_POD_NAME")),
            "labels": _items(_cni_args(config).get("labels"), ("key", "value")),
            "ports": _ports(config), "ips": [str(ip) for ip in ips]}


def write_meta(data_dir: str, network: str, meta: Mapping[str, Any]) -> str:
    """The file for ``meta``; MetaTooLarge (nothing written) if it exceeds MAX_META_BYTES:
    a larger file would be unreadable to overlayd, whose registry record would then lose
    the pod's namespace, name and labels, and with them the policies selecting it."""
    text = json.dumps(meta, separators=(",", ":"))
    if len(text) > MAX_META_BYTES:
        raise MetaTooLarge(f"{len(text)} bytes of labels and ports (at most "
                           f"{MAX_META_BYTES})")
    path = os.path.join(meta_dir(data_dir, network),
                        meta_file_name(meta["containerID"], meta["ifname"]))
    atomic_write(path, text, mode=0o600, durable=False)
    return path


def remove_meta(data_dir: str, network: str, container_id: str, ifname: str) -> None:
    """DEL: idempotent (an attachment made before this file existed has none)."""
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        os.unlink(os.path.join(meta_dir(data_dir, network),
                               meta_file_name(container_id, ifname)))
