"""The lab's names, addresses and paths: pure values, no I/O.

Every object a lab makes carries its prefix (default ``ovlab``), so ``down`` can
remove exactly what ``up`` made and two labs (a user's and the tests') never meet.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface

from overlay.errors import OverlayError

DEFAULT_PREFIX = "ovlab"
DEFAULT_NODES = 3
DEFAULT_PODS_PER_NODE = 2
DEFAULT_BASE_DIR = "/var/lib/overlay-lab"
MAX_NODES = 99          # keeps "<prefix>-node99" within the 15-character link-name limit
MAX_PODS_PER_NODE = 50

# The example cluster of the project's notes: nodes at 192.168.1.11.., pods in 10.244.0.0/16.
UNDERLAY_GATEWAY = IPv4Interface("192.168.1.1/24")
FIRST_NODE_HOST = 10    # node<i> is 192.168.1.(10 + i)
POD_NETWORK = "10.244.0.0/16"
SUBNET_LEN = 24
VNI = 1
VXLAN_PORT = 8472
ETCD_PORT = 2379
ETCD_PEER_PORT = 2380
HEALTHZ_ADDR = "127.0.0.1:9099"   # inside each node's own namespace, so one port fits all
ETCD_KEY_PREFIX = "/overlay/network"

UNIX_PATH_MAX = 107      # sun_path holds 108 bytes including the terminating NUL

_PREFIX_RE = re.compile(r"^[a-z][a-z0-9]{0,7}$")
_NODE_RE = re.compile(r"^node([1-9][0-9]?)$")


class LabError(OverlayError):
    """The lab cannot do what was asked (bad name, missing tool, a part failed to start)."""


def check_prefix(prefix: str) -> str:
    if not _PREFIX_RE.match(prefix):
        raise LabError(f"lab name {prefix!r}: use 1-8 lower-case letters/digits starting "
                       "with a letter (it prefixes every namespace and link of the lab)")
    return prefix


def node_index(node: str) -> int:
    m = _NODE_RE.match(node)
    if not m:
        raise LabError(f"node name {node!r}: expected node1..node{MAX_NODES}")
    return int(m.group(1))


@dataclass(frozen=True)
class LabSpec:
    """Where a lab named ``prefix`` keeps its things."""

    prefix: str = DEFAULT_PREFIX
    base_dir: str = DEFAULT_BASE_DIR

    def __post_init__(self) -> None:
        check_prefix(self.prefix)
        longest = self.node_file(f"node{MAX_NODES}", "cni.sock")
        if len(longest.encode()) > UNIX_PATH_MAX:
            raise LabError(f"lab dir {self.base_dir!r} is too long: the nodes' CNI sockets "
                           f"({longest}) must fit the {UNIX_PATH_MAX}-byte unix socket limit")

    # --- namespaces and links -------------------------------------------------------------
    @property
    def underlay_ns(self) -> str:
        return f"{self.prefix}-underlay"

    @property
    def bridge(self) -> str:
        return f"{self.prefix}-br"

    def node_ns(self, node: str) -> str:
        return f"{self.prefix}-{node}"

    def node_port(self, node: str) -> str:
        """The underlay end of a node's veth (the node's end is ``eth0``)."""
        return f"{self.prefix}-{node}"

    def pod_name(self, node: str, i: int) -> str:
        return f"pod-{node}-{i}"

    def pod_ns(self, pod: str) -> str:
        return f"{self.prefix}-{pod}"

    # --- addresses ----------------------------------------------------------------------
    @staticmethod
    def node_ip(node: str) -> IPv4Address:
        return UNDERLAY_GATEWAY.ip + FIRST_NODE_HOST - 1 + node_index(node)

    @staticmethod
    def node_interface(node: str) -> IPv4Interface:
        return IPv4Interface(f"{LabSpec.node_ip(node)}/{UNDERLAY_GATEWAY.network.prefixlen}")

    @property
    def etcd_endpoint(self) -> str:
        return f"http://{UNDERLAY_GATEWAY.ip}:{ETCD_PORT}"

    # --- files --------------------------------------------------------------------------
    @property
    def lab_dir(self) -> str:
        return os.path.join(self.base_dir, self.prefix)

    @property
    def state_file(self) -> str:
        return os.path.join(self.lab_dir, "lab.json")

    @property
    def etcd_dir(self) -> str:
        return os.path.join(self.lab_dir, "etcd")

    @property
    def cni_bin_dir(self) -> str:
        return os.path.join(self.lab_dir, "cni", "bin")

    def node_dir(self, node: str) -> str:
        return os.path.join(self.lab_dir, node)

    def node_file(self, node: str, name: str) -> str:
        return os.path.join(self.node_dir(node), name)

    def cni_conf_dir(self, node: str) -> str:
        return os.path.join(self.node_dir(node), "net.d")


def next_free_node(existing: list[str]) -> str:
    """The lowest unused ``node<i>`` (a removed node's slot and address are reused)."""
    used = {node_index(n) for n in existing}
    for i in range(1, MAX_NODES + 1):
        if i not in used:
            return f"node{i}"
    raise LabError(f"the lab already has {MAX_NODES} nodes, the most it can hold")
