"""overlayd's runtime file (``overlay.runtimefile``) from its settings and data plane.

Written once at start (so overlayctl finds etcd while overlayd still waits for it) and
again once the data plane is up (the VXLAN device and public IP actually in use).  A
failed write is logged and the daemon goes on: the file serves operators, not traffic.
"""

from __future__ import annotations

import logging
import os
from ipaddress import IPv4Address
from typing import Any

from overlay.cni.conflist import ConfListError, find_conflist, load_conflist
from overlay.cni.install import PLUGIN_NAME
from overlay.daemon.flags import Settings
from overlay.errors import OverlayError
from overlay.runtimefile import RuntimeInfo, write_runtime_file
from overlay.util.version import package_version

log = logging.getLogger(__name__)


def runtime_info(s: Settings, vxlan_device: str | None = None,
                 public_ip: IPv4Address | None = None) -> RuntimeInfo:
    e = s.etcd
    return RuntimeInfo(
        version=package_version() or "unknown", pid=os.getpid(), node_name=s.node_name,
        etcd_endpoints=tuple(str(ep) for ep in e.endpoints), etcd_prefix=e.prefix,
        subnet_file=os.path.abspath(s.subnet_file), cni_conf_dir=os.path.abspath(s.cni_conf_dir),
        cni_bin_dir=":".join(os.path.abspath(d) for d in s.cni_bin_dir.split(":") if d),
        etcd_cafile=_abs(e.cafile), etcd_certfile=_abs(e.certfile), etcd_keyfile=_abs(e.keyfile),
        etcd_username=e.username, etcd_password_file=_abs(e.password_file),
        healthz_addr=s.healthz_addr or None, cni_socket=_abs(s.cni_socket or None),
        vxlan_device=vxlan_device or s.vxlan_device or None, public_ip=public_ip or s.public_ip,
        bridge=cni_bridge(s.cni_conf_dir), policy_log_denied=s.policy_log_denied)


def cni_bridge(conf_dir: str) -> str | None:
    """The bridge the node's overlay CNI config names (None: no such config yet)."""
    try:
        conf = load_conflist(find_conflist(conf_dir))
    except (ConfListError, OverlayError, OSError):
        return None
    plugin: dict[str, Any] = next(
        (p for p in conf["plugins"] if p.get("type") == PLUGIN_NAME), {})
    bridge = plugin.get("bridge")
    return bridge if isinstance(bridge, str) and bridge else None


def publish_runtime(s: Settings, vxlan_device: str | None = None,
                    public_ip: IPv4Address | None = None) -> None:
    try:
        write_runtime_file(s.runtime_file, runtime_info(s, vxlan_device, public_ip))
    except OSError as e:
        log.warning("cannot write the runtime file %s: %s (overlayctl on this node then "
                    "needs flags)", s.runtime_file, e.strerror or e)
        return
    log.info("wrote %s: the settings overlayctl on this node defaults to", s.runtime_file)


def _abs(path: str | None) -> str | None:
    return os.path.abspath(path) if path else None
