"""The lab's names, addresses and paths: pure values, no I/O.

Every object a lab makes carries its prefix (default ``ovlab``), so ``down`` can
remove exactly what ``up`` made and two labs (a user's and the tests') never meet.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
)

from overlay.cluster.keys import dns_label_problem, dns_subdomain_problem
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
DEFAULT_NAMESPACE = "default"
MAX_POD_NAME = 63        # a lab pod's name becomes part of its namespace's file name
MAX_LABELS = 32
RESPONDER_PORTS = (80, 81)   # every lab pod answers TCP and UDP on these

# Dual-stack (``up --dual-stack`` / ``--ipv6-only``): the underlay gets IPv6 beside IPv4
# (node<i> at fd00:192:168:1::1<i>, the decimal digits of 192.168.1.1<i> written in the
# last group), the pods fd00:10:244::/56 with a /64 per node.  Only inside the lab's
# namespaces; fd00::/8 is unique-local, never routed off the machine.
UNDERLAY_GATEWAY6 = IPv6Interface("fd00:192:168:1::1/64")
POD_NETWORK6 = "fd00:10:244::/56"
SUBNET_LEN6 = 64
# Which families the pod network has: IPv4 only (the default), both, or IPv6 only.
FAMILIES = ("ipv4", "dual", "ipv6")

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
        """The namespace of the pod whose key (:func:`pod_key`) is ``pod``: a pod of
        ``default`` is ``<prefix>-<name>``, another ``<prefix>-<ns>_<name>`` ('_' is in
        neither name's alphabet, so no two pods share a namespace)."""
        return f"{self.prefix}-{pod.replace('/', '_')}"

    # --- addresses ----------------------------------------------------------------------
    @staticmethod
    def node_ip(node: str) -> IPv4Address:
        return UNDERLAY_GATEWAY.ip + FIRST_NODE_HOST - 1 + node_index(node)

    @staticmethod
    def node_subnet(node: str) -> IPv4Network:
        """The subnet the lab reserves for ``node``: node<i> holds 10.244.<i>.0/24, the
        example cluster's table (node1 10.244.1.0/24, node2 10.244.2.0/24, ...)."""
        net = IPv4Network(POD_NETWORK)
        return IPv4Network((int(net.network_address) + (node_index(node) << (32 - SUBNET_LEN)),
                            SUBNET_LEN))

    @staticmethod
    def node_subnet6(node: str) -> IPv6Network:
        """The subnet an IPv6-only lab reserves for ``node``: node<i> holds
        fd00:10:244:<i>::/64 (hexadecimal i), as its IPv4 twin holds 10.244.<i>.0/24."""
        net = IPv6Network(POD_NETWORK6)
        return IPv6Network((int(net.network_address) + (node_index(node) << (128 - SUBNET_LEN6)),
                            SUBNET_LEN6))

    @staticmethod
    def node_interface(node: str) -> IPv4Interface:
        return IPv4Interface(f"{LabSpec.node_ip(node)}/{UNDERLAY_GATEWAY.network.prefixlen}")

    @staticmethod
    def node_ip6(node: str) -> IPv6Address:
        """node<i>'s IPv6 underlay address: fd00:192:168:1::1<i> (node1 ::11, node12 ::22),
        so it reads like the IPv4 one."""
        return IPv6Address(f"{UNDERLAY_GATEWAY6.network.network_address}"
                           f"{FIRST_NODE_HOST + node_index(node)}")

    @staticmethod
    def node_interface6(node: str) -> IPv6Interface:
        return IPv6Interface(f"{LabSpec.node_ip6(node)}/{UNDERLAY_GATEWAY6.network.prefixlen}")

    @property
    def etcd_endpoint(self) -> str:
        return f"http://{UNDERLAY_GATEWAY.ip}:{ETCD_PORT}"

    @property
    def etcd_endpoint6(self) -> str:
        """etcd over the IPv6 underlay (a dual-stack lab's etcd listens on both)."""
        return f"http://[{UNDERLAY_GATEWAY6.ip}]:{ETCD_PORT}"

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

    @property
    def pods_dir(self) -> str:
        return os.path.join(self.lab_dir, "pods")

    def pod_dir(self, pod: str) -> str:
        """The directory of the pod whose key is ``pod`` (named as its namespace is)."""
        return os.path.join(self.pods_dir, pod.replace("/", "_"))

    def pod_file(self, pod: str, name: str) -> str:
        """A file of the pod whose key is ``pod`` (its responder's pid file and log)."""
        return os.path.join(self.pod_dir(pod), name)


def check_families(families: str) -> str:
    if families not in FAMILIES:
        raise LabError(f"address families {families!r}: expected one of {', '.join(FAMILIES)}")
    return families


def next_free_node(existing: list[str]) -> str:
    """The lowest unused ``node<i>`` (a removed node's slot and address are reused)."""
    used = {node_index(n) for n in existing}
    for i in range(1, MAX_NODES + 1):
        if i not in used:
            return f"node{i}"
    raise LabError(f"the lab already has {MAX_NODES} nodes, the most it can hold")


def responder_reply(pod: str, protocol: str, port: int) -> bytes:
    """The one line a lab pod's responder (``NS/NAME``) answers on ``protocol/port``."""
    return f"overlay-lab responder {pod} {protocol}/{port}\n".encode()


def pod_key(namespace: str, name: str) -> str:
    """How the lab names a pod: ``name`` for one in ``default``, else ``ns/name``."""
    return name if namespace == DEFAULT_NAMESPACE else f"{namespace}/{name}"


def check_pod_name(name: str) -> str:
    problem = dns_subdomain_problem(name)
    if problem is None and len(name) > MAX_POD_NAME:
        problem = f"is {len(name)} characters long (the lab takes at most {MAX_POD_NAME})"
    if problem:
        raise LabError(f"pod name {name!r} {problem}")
    return name


def check_namespace(namespace: str) -> str:
    problem = dns_label_problem(namespace)
    if problem:
        raise LabError(f"namespace {namespace!r} {problem}")
    return namespace


def parse_pod_ref(text: str) -> tuple[str | None, str]:
    """``NS/NAME`` -> (NS, NAME); a bare ``NAME`` -> (None, NAME): any namespace."""
    ns, sep, name = text.rpartition("/")
    if sep:
        return check_namespace(ns), check_pod_name(name)
    return None, check_pod_name(name)


def parse_labels(text: str) -> dict[str, str]:
    """``k=v,k2=v2`` -> {k: v, k2: v2}: keys DNS-1123 subdomains with an optional
    ``prefix/``, values at most 63 characters of letters, digits, ``-_.`` (Kubernetes'
    label syntax, simplified); an empty string is no labels."""
    labels: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise LabError(f"label {item!r}: expected key=value")
        _check_label(key, value)
        if key in labels:
            raise LabError(f"label {key!r} is given twice")
        labels[key] = value
    if len(labels) > MAX_LABELS:
        raise LabError(f"{len(labels)} labels: the lab takes at most {MAX_LABELS}")
    return labels


_LABEL_NAME_RE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")


def _check_label(key: str, value: str) -> None:
    prefix, _, name = key.rpartition("/")
    if prefix and dns_subdomain_problem(prefix):
        raise LabError(f"label key {key!r}: its prefix {dns_subdomain_problem(prefix)}")
    if not _LABEL_NAME_RE.match(name):
        raise LabError(f"label key {key!r}: a name of 1-63 letters, digits, '-', '_', '.', "
                       "starting and ending with a letter or digit")
    if value and not _LABEL_NAME_RE.match(value):
        raise LabError(f"label {key}={value!r}: a value of at most 63 letters, digits, "
                       "'-', '_', '.', starting and ending with a letter or digit")
