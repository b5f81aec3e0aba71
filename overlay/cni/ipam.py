"""IP address management on host-local's on-disk layout.

``<dataDir>/<network name>/<ip>`` holds ``<container id>\\r\\n<ifname>``;
``last_reserved_ip.<range index>`` the last address handed out from that range (round
robin starts after it).  One range per family, as host-local's ``ranges`` list gives a
dual-stack pod: index 0 the IPv4 subnet, 1 the IPv6 one (``last_reserved_ip.0`` alone
on an IPv4-only node, as before); an IPv6 file is named by the address in RFC 5952
text (``fd00:10:244:1::2``), as host-local writes it;
``lock`` is taken with ``flock`` around every read-modify-write, so concurrent plugin
processes (and the warm server's threads) never hand out one address twice.

A :class:`Store` does raw storage; the :class:`Allocator` decides which address.
The in-memory fake the unit tests check against the same contract is ``tests.fakes.FakeStore``.
"""

from __future__ import annotations

import _socket  # not ``socket`` (~3 ms of enum set-up): see overlay.netlink.rtnl
import errno
import fcntl
import os
import stat
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Protocol

from overlay.errors import IPAMError
from overlay.util import lazylog

log = lazylog.get_logger(__name__)

LINE_BREAK = "\r\n"
LAST_IP_PREFIX = "last_reserved_ip."
LAST_IP_FILE = LAST_IP_PREFIX + "0"
LOCK_FILE = "lock"

Attachment = tuple[str, str]  # (container id, ifname)
IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network


def last_ip_file(range_id: int) -> str:
    return f"{LAST_IP_PREFIX}{range_id}"


def ip_sort_key(ip: IPAddress) -> tuple[int, int]:
    """IPv4 before IPv6 (``ipaddress`` refuses to compare across families)."""
    return ip.version, int(ip)


class Store(Protocol):
    """What the allocator needs from storage (``DiskStore``; ``tests.fakes.FakeStore``)."""

    def lock(self) -> AbstractContextManager[None]: ...
    def reserve(self, container_id: str, ifname: str, ip: IPAddress,
                range_id: int = 0) -> bool: ...
    def last_reserved(self, range_id: int = 0) -> IPAddress | None: ...
    def reservations(self) -> dict[IPAddress, Attachment]: ...
    def release(self, ip: IPAddress) -> None: ...


# Every file of the store is opened relative to the store's directory fd and without
# following a symlink: a link planted in the data dir must not make ADD overwrite
# (last_reserved_ip.0), create (lock) or read (a per-IP file) some other file.
_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | _NOFOLLOW


def _os_problem(e: OSError) -> str:
    if e.errno == errno.ELOOP:
        return "is a symlink (not followed)"
    return e.strerror or str(e)


class DiskStore:
    """host-local's disk backend: one ``O_EXCL`` file per address under ``flock``."""

    def __init__(self, data_dir: str, network_name: str):
        self.dir = os.path.join(data_dir, network_name)
        self._dfd: int | None = None  # the directory, while the lock is held

    @contextmanager
    def _at(self) -> Iterator[int]:
        """The store directory's fd: the locked one, or one opened for this call."""
        if self._dfd is not None:
            yield self._dfd
            return
        fd = os.open(self.dir, _DIR_FLAGS)
        try:
            yield fd
        finally:
            os.close(fd)

    @contextmanager
    def lock(self) -> Iterator[None]:
        try:
            os.makedirs(self.dir, mode=0o755, exist_ok=True)
            dfd = os.open(self.dir, _DIR_FLAGS)
        except OSError as e:
            raise IPAMError(f"cannot open IPAM store {self.dir}: {_os_problem(e)}") from e
        try:
            fd = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT | _NOFOLLOW, 0o600, dir_fd=dfd)
        except OSError as e:
            os.close(dfd)
            raise IPAMError(f"cannot open IPAM store {self.dir}: {LOCK_FILE} "
                            f"{_os_problem(e)}") from e
        # flock belongs to the open file description, so separate opens exclude each
        # other across processes *and* across the warm server's threads.
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._dfd = dfd
            yield
        finally:
            self._dfd = None
            os.close(fd)  # closing releases the flock
            os.close(dfd)

    def reserve(self, container_id: str, ifname: str, ip: IPAddress, range_id: int = 0) -> bool:
        path = os.path.join(self.dir, str(ip))
        with self._at() as dfd:
            try:
                fd = os.open(str(ip), os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o600,
                             dir_fd=dfd)
            except FileExistsError:
                return False
            except OSError as e:
                raise IPAMError(f"cannot reserve {ip} in {self.dir}: {e.strerror}") from e
            try:
                os.write(fd, (container_id + LINE_BREAK + ifname).encode())
            except OSError as e:
                os.close(fd)
                os.unlink(str(ip), dir_fd=dfd)
                raise IPAMError(f"cannot write {path}: {e.strerror}") from e
            os.close(fd)
            try:
                self._write_last(dfd, ip, range_id)
            except OSError as e:  # e.g. ENOSPC, EROFS, a symlink: give the address back
                try:
                    os.unlink(str(ip), dir_fd=dfd)
                except OSError as undo:
                    log.warning("IPAM: cannot remove %s after a failed reservation: %s",
                                path, undo.strerror)
                raise IPAMError(f"cannot record {ip} in {self.dir}/{last_ip_file(range_id)}: "
                                f"{_os_problem(e)}") from e
        return True

    @staticmethod
    def _write_last(dfd: int, ip: IPAddress, range_id: int = 0) -> None:
        data = str(ip).encode()
        # Overwrite in place, then cut to length: O_TRUNC (size 0) makes ext4 flush the
        # file synchronously at close (auto_da_alloc), measured at 5-7 ms per ADD here.
        fd = os.open(last_ip_file(range_id), os.O_WRONLY | os.O_CREAT | _NOFOLLOW, 0o600,
                     dir_fd=dfd)
        try:
            os.pwrite(fd, data, 0)
            os.ftruncate(fd, len(data))
        finally:
            os.close(fd)

    @staticmethod
    def _read_small(dfd: int, name: str) -> bytes | None:
        """A regular file's first 4 KiB, or None (absent, a symlink, a FIFO...)."""
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | _NOFOLLOW, dir_fd=dfd)
        except OSError:
            return None
        try:
            return os.read(fd, 4096) if stat.S_ISREG(os.fstat(fd).st_mode) else None
        finally:
            os.close(fd)

    def last_reserved(self, range_id: int = 0) -> IPAddress | None:
        try:
            with self._at() as dfd:
                raw = self._read_small(dfd, last_ip_file(range_id))
            if raw is None:
                return None
            text = raw.decode("ascii").strip()
            return IPv6Address(text) if ":" in text else IPv4Address(text)
        except (OSError, ValueError):
            return None

    def reservations(self) -> dict[IPAddress, Attachment]:
        out: dict[IPAddress, Attachment] = {}
        try:
            with self._at() as dfd:
                for name in os.listdir(dfd):
                    entry = self._reservation(dfd, name)
                    if entry is not None:
                        out[entry[0]] = entry[1]
        except FileNotFoundError:
            return out
        except OSError as e:
            raise IPAMError(f"cannot read IPAM store {self.dir}: {_os_problem(e)}") from e
        return out

    def _reservation(self, dfd: int, name: str) -> tuple[IPAddress, Attachment] | None:
        ip = _file_ip(name)
        if ip is None:
            return None
        raw = self._read_small(dfd, name)  # released while we listed, or not a file
        if raw is None:
            return None
        # Trimmed as a whole, as host-local's GetByID does; the parts are not (validated
        # IDs hold no whitespace, so "c1\n" can never own "c1"'s address).
        text = raw.decode("utf-8", "replace").strip()
        container_id, _, ifname = text.partition(LINE_BREAK)
        return ip, (container_id, ifname)

    def release(self, ip: IPAddress) -> None:
        try:
            with self._at() as dfd:
                os.unlink(str(ip), dir_fd=dfd)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise IPAMError(f"cannot release {ip} in {self.dir}: {_os_problem(e)}") from e


def _file_ip(name: str) -> IPAddress | None:
    """The address a store file is named by, or None (lock, last_reserved_ip.N, pods/,
    and any name this layout never writes: "010.1.1.1", "FD00::2", "fd00::2%eth0")."""
    ip: IPAddress
    if ":" in name:
        if "%" in name:
            return None  # a scoped (link-local) address: never a pod's
        try:
            ip = IPv6Address(name)
        except ValueError:
            return None
    elif name[:1].isdigit() and name.count(".") == 3:
        try:
            ip = IPv4Address(_socket.inet_aton(name))
        except (OSError, ValueError):
            return None
    else:
        return None
    return ip if str(ip) == name else None


def _matches(owner: Attachment, container_id: str, ifname: str) -> bool:
    # host-local also releases old files that hold only the container ID.  No stripping:
    # the validated ID is the one name for the veth, the files and the result.
    return owner[0] == container_id and owner[1] in (ifname, "")


class Allocator:
    """Round-robin allocation from ``subnet`` (range ``range_id`` of the store), never
    the network address or the gateway; for IPv4 never the broadcast address either
    (host-local's default range: IPv6 has no broadcast, so it ends at the last address)."""

    def __init__(self, store: Store, subnet: IPNetwork, gateway: IPAddress, range_id: int = 0):
        self.store = store
        self.subnet = subnet
        self.gateway = gateway
        self.range_id = range_id
        self.first: IPAddress = subnet.network_address + 1
        self.last: IPAddress = subnet.broadcast_address - (1 if subnet.version == 4 else 0)

    def usable(self, ip: IPAddress) -> bool:
        return (ip.version == self.subnet.version and self.first <= ip <= self.last  # type: ignore[operator]
                and ip != self.gateway)

    def allocate(self, container_id: str, ifname: str,
                 requested: IPAddress | None = None) -> IPAddress:
        with self.store.lock():
            return self.allocate_locked(container_id, ifname, requested)

    def allocate_locked(self, container_id: str, ifname: str,
                        requested: IPAddress | None = None) -> IPAddress:
        """As :meth:`allocate`, with the store's lock already held by the caller."""
        taken = self.store.reservations()
        for ip, owner in taken.items():
            if owner == (container_id, ifname) and ip.version == self.subnet.version:
                raise IPAMError(f"{ip} is already allocated to container {container_id} "
                                f"interface {ifname}: duplicate allocation is not allowed")
        if requested is not None:
            return self._allocate_requested(container_id, ifname, requested)
        for ip in self._candidates():
            if ip not in taken and self.store.reserve(container_id, ifname, ip, self.range_id):
                log.info("IPAM: reserved %s for %s/%s", ip, container_id, ifname)
                return ip
        raise IPAMError(f"no IP addresses available in {self.subnet} "
                        f"({self.size} usable, all reserved)")

    def _allocate_requested(self, container_id: str, ifname: str, ip: IPAddress) -> IPAddress:
        if not self.usable(ip):
            raise IPAMError(f"requested IP {ip} is not usable in {self.subnet} "
                            f"(range {self.first}-{self.last}, gateway {self.gateway})")
        if not self.store.reserve(container_id, ifname, ip, self.range_id):
            raise IPAMError(f"requested IP {ip} is already allocated")
        log.info("IPAM: reserved requested %s for %s/%s", ip, container_id, ifname)
        return ip

    @property
    def size(self) -> int:
        gw = self.gateway
        in_range = gw.version == self.subnet.version and self.first <= gw <= self.last  # type: ignore[operator]
        return int(self.last) - int(self.first) + 1 - (1 if in_range else 0)

    def _candidates(self) -> Iterator[IPAddress]:
        """Every usable address once, starting after the last reserved one."""
        last = self.store.last_reserved(self.range_id)
        first, end = int(self.first), int(self.last)
        start = first
        if last is not None and last.version == self.subnet.version and first <= int(last) < end:
            start = int(last) + 1
        span = end - first + 1
        offset = start - first
        make = type(self.first)
        for i in range(span):
            ip = make(first + (offset + i) % span)
            if ip != self.gateway:
                yield ip

    def free_count(self, taken: Iterable[IPAddress] | None = None) -> int:
        """Free usable addresses, in ``taken`` (a reservations snapshot) or read now."""
        if taken is None:
            with self.store.lock():
                taken = list(self.store.reservations())
        return self.size - sum(1 for ip in taken if self.usable(ip))


def allocate_all(store: Store, allocators: Sequence[Allocator], container_id: str, ifname: str,
                 requested: Mapping[int, IPAddress] | None = None) -> list[IPAddress]:
    """One address from each allocator (one range per family), under one lock: all or
    none.  A later range's failure gives back what the earlier ones reserved, so a
    dual-stack ADD never leaves a lone IPv4 reservation behind (a crash between the two
    files leaves one, named by the container: DEL or GC frees it)."""
    requested = requested or {}
    got: list[IPAddress] = []
    with store.lock():
        try:
            for a in allocators:
                got.append(a.allocate_locked(container_id, ifname,
                                             requested.get(a.subnet.version)))
        except BaseException:
            for ip in got:
                try:
                    store.release(ip)
                    log.info("IPAM: gave back %s for %s/%s", ip, container_id, ifname)
                except IPAMError as e:  # the original error is the one to report
                    log.warning("IPAM: cannot give back %s: %s", ip, e)
            raise
    return got


def release(store: Store, container_id: str, ifname: str) -> list[IPAddress]:
    """DEL: free every address held by this attachment (no subnet needed)."""
    released = []
    with store.lock():
        for ip, owner in store.reservations().items():
            if _matches(owner, container_id, ifname):
                store.release(ip)
                released.append(ip)
                log.info("IPAM: released %s held by %s/%s", ip, owner[0], owner[1])
    return released


def release_ip(store: Store, ip: IPAddress, container_id: str, ifname: str) -> None:
    """Rollback of one allocation: only if the file still holds this attachment."""
    with store.lock():
        owner = store.reservations().get(ip)
        if owner is not None and _matches(owner, container_id, ifname):
            store.release(ip)
            log.info("IPAM: rolled back %s for %s/%s", ip, container_id, ifname)


def get(store: Store, container_id: str, ifname: str) -> list[IPAddress]:
    with store.lock():
        return sorted((ip for ip, owner in store.reservations().items()
                       if _matches(owner, container_id, ifname)), key=ip_sort_key)


def gc(store: Store, valid: Iterable[Attachment]) -> list[tuple[IPAddress, Attachment]]:
    """GC: release every reservation whose attachment is not in ``valid``."""
    keep = {(c, i) for c, i in valid}
    keep_ids = {c for c, _ in keep}
    with store.lock():
        stale = [(ip, owner) for ip, owner in store.reservations().items()
                 if owner not in keep and not (owner[1] == "" and owner[0] in keep_ids)]
        for ip, owner in stale:
            store.release(ip)
            log.info("IPAM GC: released %s held by %s/%s", ip, owner[0], owner[1])
    return stale
