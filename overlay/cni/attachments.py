"""This node's pod attachments, as the CNI plugin left them on disk.

The plugin leaves two files per attachment under its data dir: host-local's IPAM record
(``<network>/<ip>``: container ID, ifname) and the pod metadata
(``<network>/pods/<id>@<ifname>.json``: namespace, name, labels, ports; see
``overlay.cni.podmeta``). :func:`scan_local` reads both, each metadata file through one
rule (:func:`parse_meta`). They are the node's own truth about its pods: the pod
publisher (``overlay.daemon.podpublisher``) publishes them to the registry, and the
policy table's local pods (their IPs, veths, names) are taken from them, not from etcd,
where any node could rewrite them (``overlay.policy.build``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv6Network
from typing import Any

from overlay.cluster.pods import (
    DEFAULT_NAMESPACE,
    PodValueError,
    Port,
    container_id_problem,
    identity_problem,
    label_problem,
    parse_port,
)
from overlay.cni import podmeta
from overlay.cni.ipam import DiskStore, IPAddress
from overlay.errors import OverlayError
from overlay.lease import IPNetwork
from overlay.util import jsontext
from overlay.util.fsutil import os_reason, read_small_file

ADD_GRACE = 10.0  # an IPAM record this young without metadata is an ADD still running
# ... for the policy table, which takes an older one as a pod of unknown identity: an ADD
# writes its metadata milliseconds after its IPAM record (one slower is compiled again by
# its own admission)
RUNNING_GRACE = 2.0

# ---- the pod metadata file, judged ---------------------------------------------------------

@dataclass(frozen=True)
class PodIdentity:
    namespace: str
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    ports: tuple[Port, ...] = ()


def fallback_identity(container_id: str) -> PodIdentity:
    """What a pod is called without usable metadata: namespace default, the container ID."""
    return PodIdentity(DEFAULT_NAMESPACE, container_id)


def _meta_labels(raw: Any, problems: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in raw if isinstance(raw, list) else []:
        key, value = (item.get("key"), item.get("value", "")) if isinstance(item, dict) else (
            None, None)
        problem = label_problem(key, value)
        if problem:
            problems.append(problem)
        elif isinstance(key, str) and isinstance(value, str):  # what label_problem proved
            out[key] = value
    return out


def _meta_ports(raw: Any, problems: list[str]) -> tuple[Port, ...]:
    ports: list[Port] = []
    for item in raw if isinstance(raw, list) else []:
        try:
            port = parse_port(item)
        except PodValueError as e:
            problems.append(str(e))
            continue
        if port not in ports:
            ports.append(port)
    return tuple(ports)


def _is_own_meta(obj: Any, container_id: str, ifname: str) -> bool:
    return isinstance(obj, dict) and (obj.get("containerID"), obj.get("ifname")) == (
        container_id, ifname)


def parse_meta(obj: Any, container_id: str, ifname: str) -> tuple[PodIdentity, list[str]]:
    """The one rule for a metadata file's content: the identity (DNS-1123 names, else the
    fallback), labels (Kubernetes' syntax) and ports, each bad part dropped alone; the
    problems found, for the caller to log."""
    if not _is_own_meta(obj, container_id, ifname):
        return fallback_identity(container_id), ["not this attachment's metadata"]
    problems: list[str] = []
    namespace = obj.get("namespace") or DEFAULT_NAMESPACE
    name = obj.get("name") or container_id
    problem = identity_problem(namespace, name)
    if problem:
        problems.append(f"{problem}; using {DEFAULT_NAMESPACE}/{container_id}")
        namespace, name = DEFAULT_NAMESPACE, container_id
    return PodIdentity(namespace, name, _meta_labels(obj.get("labels"), problems),
                       _meta_ports(obj.get("ports"), problems)), problems


_ABSENT = object()


def _read_json_file(path: str) -> tuple[Any, str]:
    """A small regular file's JSON (no symlink, bounded: ``read_small_file``) and "", or
    None and what makes it unusable, or ``_ABSENT`` if there is no such file. Never
    raises: a directory, a FIFO or an I/O error at ``path`` is one unusable file, not a
    failed scan."""
    try:
        raw = read_small_file(path, podmeta.MAX_META_BYTES, follow_symlinks=False)
    except FileNotFoundError:
        return _ABSENT, ""
    except OSError as e:
        return None, os_reason(e)
    try:
        return jsontext.loads(raw), ""
    except ValueError as e:
        return None, f"not JSON ({e})"


# ---- this node's attachments on disk -------------------------------------------------------

@dataclass(frozen=True)
class LocalPod:
    """One container's attachments (a second interface adds IPs), and who it is.

    ``identity_known`` is False when the metadata file is missing or unusable (garbled,
    not a regular file, another attachment's): who the pod is, and so which policies
    select it, is not known. Such a pod is not published, and while any NetworkPolicy
    is in force it is isolated both ways (``overlay.policy.build``): a damaged file
    never lifts the isolation a policy gave the pod."""
    container_id: str
    ifname: str  # the first attachment's (by name)
    ips: tuple[IPAddress, ...]  # IPv4 first, then IPv6 (a dual-stack node's)
    identity: PodIdentity
    identity_known: bool = True
    interfaces: int = 1  # how many of its interfaces hold these IPs


UNKNOWN = ("; who the pod is stays unknown: not published, and isolated both ways while "
           "any NetworkPolicy is in force")


class ScanError(OverlayError):
    """The data dir could not be read: nothing may be deleted on its account."""


def _network_dirs(data_dir: str) -> list[str]:
    try:
        return sorted(e.name for e in os.scandir(data_dir) if e.is_dir(follow_symlinks=False))
    except FileNotFoundError:
        raise ScanError(f"{data_dir} does not exist (is --cni-data-dir right?)") from None
    except OSError as e:
        raise ScanError(f"cannot read {data_dir}: {e.strerror}") from e


def scan_local(data_dir: str, subnet: IPNetwork,
               warn: Callable[[str, str], None],
               ipv6: IPv6Network | None = None, *,
               grace: float = ADD_GRACE) -> dict[str, LocalPod]:
    """Every container with an IPAM record inside ``subnet`` (or ``ipv6``, the node's
    IPv6 subnet on a dual-stack node), by container ID. One whose IPAM record is younger
    than ``grace`` and has no metadata yet (its ADD still running) is left out; an older
    one without metadata is of unknown identity."""
    by_container: dict[str, list[tuple[str, IPAddress, str]]] = {}
    for network in _network_dirs(data_dir):
        try:
            reservations = DiskStore(data_dir, network).reservations()
        except OverlayError as e:
            raise ScanError(str(e)) from e
        for ip, (container_id, ifname) in reservations.items():
            if (_inside(ip, subnet, ipv6)
                    and container_id_problem(container_id) is None and ifname):
                by_container.setdefault(container_id, []).append((ifname, ip, network))
    out = {}
    for container_id, attachments in by_container.items():
        # IPv4 before IPv6 (the registry's order), then by interface; the metadata file
        # is the first interface's, whichever family
        attachments.sort(key=lambda a: (a[1].version, a[0], int(a[1])))
        ifname, ip, network = min(attachments, key=lambda a: (a[0], a[1].version, int(a[1])))
        path = os.path.join(podmeta.meta_dir(data_dir, network),
                            podmeta.meta_file_name(container_id, ifname))
        raw, unusable = _read_json_file(path)
        if raw is _ABSENT and _younger_than(os.path.join(data_dir, network, str(ip)), grace):
            continue  # its ADD writes the metadata last: publish it once that is there
        known = raw is not _ABSENT and raw is not None
        if known:
            identity, problems = parse_meta(raw, container_id, ifname)
            known = _is_own_meta(raw, container_id, ifname)
        else:
            identity, problems = fallback_identity(container_id), [
                unusable or "no metadata file (removed, or an ADD by an older plugin)"]
        if not known:
            problems = [problems[0] + UNKNOWN]
        for problem in problems:
            warn(path, problem)
        out[container_id] = LocalPod(container_id, ifname,
                                     tuple(ip for _, ip, _ in attachments), identity, known,
                                     len({a[0] for a in attachments}))
    return out


def _inside(ip: IPAddress, subnet: IPNetwork, ipv6: IPv6Network | None) -> bool:
    """In the lease's subnet (an IPv6-only lease's is IPv6), or in its IPv6 half."""
    return ip in subnet or (ipv6 is not None and ip in ipv6)


def _younger_than(path: str, seconds: float) -> bool:
    try:
        return time.time() - os.stat(path, follow_symlinks=False).st_mtime < seconds
    except OSError:
        return False


def disk_signature(data_dir: str) -> tuple[int, ...]:
    """The data dir's and its network dirs' mtimes, and each metadata file's (inode,
    mtime, size): any ADD or DEL moves one, and so does a metadata file rewritten in
    place (which moves no directory's mtime). One ``stat`` per pod."""
    marks = []
    for path in [data_dir] + [os.path.join(data_dir, n) for n in _safe_dirs(data_dir)]:
        for p in (path, os.path.join(path, podmeta.META_DIR)):
            try:
                marks.append(os.stat(p, follow_symlinks=False).st_mtime_ns)
            except OSError:
                marks.append(0)
        marks.append(_files_mark(os.path.join(path, podmeta.META_DIR)))
    return tuple(marks)


def _files_mark(path: str) -> int:
    files = []
    try:
        with os.scandir(path) as entries:
            for e in entries:
                try:
                    st = e.stat(follow_symlinks=False)
                except OSError:
                    continue  # gone since listed: the directory's mtime says so
                files.append((e.name, st.st_ino, st.st_mtime_ns, st.st_size))
    except OSError:
        return 0
    return hash(tuple(sorted(files)))


def _safe_dirs(data_dir: str) -> list[str]:
    try:
        return _network_dirs(data_dir)
    except ScanError:
        return []


class AttachmentCache:
    """``scan_local`` again only when the data dir changed (``disk_signature``) or the
    subnets did: the policy agent asks at every compile, and a scan reads two files per
    pod. Problems are the publisher's to log (it reads the same files); a data dir that
    cannot be read raises ScanError, one that does not exist yet holds nothing."""

    def __init__(self, data_dir: str):
        self.data_dir = data_dir
        self._key: tuple[object, ...] | None = None
        self._held: dict[str, LocalPod] = {}
        self._at = 0.0
        self._looked: tuple[int, ...] | None = None  # the signature at the last moved()

    def moved(self) -> bool:
        """Whether the data dir changed since the last scan and held still since the
        last look (one ``stat`` per pod): an ADD moves it twice within milliseconds
        (IPAM record, then metadata), and its own admission compiles it."""
        if self._key is None:
            return False
        now = disk_signature(self.data_dir)
        still, self._looked = now == self._looked, now
        return still and now != self._key[2]

    def current(self, subnet: IPNetwork | None, ipv6: IPv6Network | None = None
                ) -> dict[str, LocalPod]:
        if subnet is None or not os.path.lexists(self.data_dir):
            return {}  # no ADD has run on this node yet: nothing is attached
        key = (subnet, ipv6, disk_signature(self.data_dir))
        # again after RUNNING_GRACE anyway: an IPAM record left out as an ADD still
        # running may stay without metadata (and a file rewritten within one mtime tick
        # of the last scan, at the same size, moves no mark)
        if key != self._key or time.monotonic() - self._at >= RUNNING_GRACE:
            self._held = scan_local(self.data_dir, subnet, lambda _what, _problem: None, ipv6,
                                    grace=RUNNING_GRACE)
            self._key, self._at = key, time.monotonic()
        return dict(self._held)
