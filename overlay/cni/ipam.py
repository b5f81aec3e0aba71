"""IP address management on host-local's on-disk layout.

``<dataDir>/<network name>/<ip>`` holds ``<container id>\\r\\n<ifname>``;
``last_reserved_ip.0`` the last address handed out (round robin starts after it);
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
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from ipaddress import IPv4Address, IPv4Network
from typing import Protocol

from overlay.errors import IPAMError
from overlay.util import lazylog

log = lazylog.get_logger(__name__)

LINE_BREAK = "\r\n"
LAST_IP_FILE = "last_reserved_ip.0"
LOCK_FILE = "lock"

Attachment = tuple[str, str]  # (container id, ifname)


class Store(Protocol):
    """What the allocator needs from storage (``DiskStore``; ``tests.fakes.FakeStore``)."""

    def lock(self) -> AbstractContextManager[None]: ...
    def reserve(self, container_id: str, ifname: str, ip: IPv4Address) -> bool: ...
    def last_reserved(self) -> IPv4Address | None: ...
    def reservations(self) -> dict[IPv4Address, Attachment]: ...
    def release(self, ip: IPv4Address) -> None: ...


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

    def reserve(self, container_id: str, ifname: str, ip: IPv4Address) -> bool:
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
                self._write_last(dfd, ip)
            except OSError as e:  # e.g. ENOSPC, EROFS, a symlink: give the address back
                try:
                    os.unlink(str(ip), dir_fd=dfd)
                except OSError as undo:
                    log.warning("IPAM: cannot remove %s after a failed reservation: %s",
                                path, undo.strerror)
                raise IPAMError(f"cannot record {ip} in {self.dir}/{LAST_IP_FILE}: "
                                f"{_os_problem(e)}") from e
        return True

    @staticmethod
    def _write_last(dfd: int, ip: IPv4Address) -> None:
        data = str(ip).encode()
        # Overwrite in place, then cut to length: O_TRUNC (size 0) makes ext4 flush the
        # file synchronously at close (auto_da_alloc), measured at 5-7 ms per ADD here.
        fd = os.open(LAST_IP_FILE, os.O_WRONLY | os.O_CREAT | _NOFOLLOW, 0o600, dir_fd=dfd)
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

    def last_reserved(self) -> IPv4Address | None:
        try:
            with self._at() as dfd:
                raw = self._read_small(dfd, LAST_IP_FILE)
            return IPv4Address(raw.decode("ascii").strip()) if raw is not None else None
        except (OSError, ValueError):
            return None

    def reservations(self) -> dict[IPv4Address, Attachment]:
        out: dict[IPv4Address, Attachment] = {}
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

    def _reservation(self, dfd: int, name: str) -> tuple[IPv4Address, Attachment] | None:
        if not name[:1].isdigit() or name.count(".") != 3:
            return None  # lock, last_reserved_ip.0, IPv6 files (hex)
        try:
            ip = IPv4Address(_socket.inet_aton(name))
        except (OSError, ValueError):
            return None
        if str(ip) != name:
            return None  # "010.1.1.1" and friends: not a file this layout writes
        raw = self._read_small(dfd, name)  # released while we listed, or not a file
        if raw is None:
            return None
        # Trimmed as a whole, as host-local's GetByID does; the parts are not (validated
        # IDs hold no whitespace, so "c1\n" can never own "c1"'s address).
        text = raw.decode("utf-8", "replace").strip()
        container_id, _, ifname = text.partition(LINE_BREAK)
        return ip, (container_id, ifname)

    def release(self, ip: IPv4Address) -> None:
        try:
            with self._at() as dfd:
                os.unlink(str(ip), dir_fd=dfd)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise IPAMError(f"cannot release {ip} in {self.dir}: {_os_problem(e)}") from e


def _matches(owner: Attachment, container_id: str, ifname: str) -> bool:
    # host-local also releases old files that hold only the container ID.  No stripping:
    # the validated ID is the one name for the veth, the files and the result.
    return owner[0] == container_id and owner[1] in (ifname, "")


class Allocator:
    """Round-robin allocation from ``subnet``, never the network, broadcast or gateway."""

    def __init__(self, store: Store, subnet: IPv4Network, gateway: IPv4Address):
        self.store = store
        self.subnet = subnet
        self.gateway = gateway
        self.first = subnet.network_address + 1
        self.last = subnet.broadcast_address - 1

    def usable(self, ip: IPv4Address) -> bool:
        return self.first <= ip <= self.last and ip != self.gateway

    def allocate(self, container_id: str, ifname: str,
                 requested: IPv4Address | None = None) -> IPv4Address:
        with self.store.lock():
            taken = self.store.reservations()
            for ip, owner in taken.items():
                if owner == (container_id, ifname):
                    raise IPAMError(f"{ip} is already allocated to container {container_id} "
                                    f"interface {ifname}: duplicate allocation is not allowed")
            if requested is not None:
                return self._allocate_requested(container_id, ifname, requested)
            for ip in self._candidates():
                if ip not in taken and self.store.reserve(container_id, ifname, ip):
                    log.info("IPAM: reserved %s for %s/%s", ip, container_id, ifname)
                    return ip
        raise IPAMError(f"no IP addresses available in {self.subnet} "
                        f"({self.size} usable, all reserved)")

    def _allocate_requested(self, container_id: str, ifname: str, ip: IPv4Address) -> IPv4Address:
        if not self.usable(ip):
            raise IPAMError(f"requested IP {ip} is not usable in {self.subnet} "
                            f"(range {self.first}-{self.last}, gateway {self.gateway})")
        if not self.store.reserve(container_id, ifname, ip):
            raise IPAMError(f"requested IP {ip} is already allocated")
        log.info("IPAM: reserved requested %s for %s/%s", ip, container_id, ifname)
        return ip

    @property
    def size(self) -> int:
        in_range = self.first <= self.gateway <= self.last
        return int(self.last) - int(self.first) + 1 - (1 if in_range else 0)

    def _candidates(self) -> Iterator[IPv4Address]:
        """Every usable address once, starting after the last reserved one."""
        last = self.store.last_reserved()
        start = last + 1 if last is not None and self.first <= last < self.last else self.first
        span = int(self.last) - int(self.first) + 1
        offset = int(start) - int(self.first)
        for i in range(span):
            ip = self.first + (offset + i) % span
            if ip != self.gateway:
                yield ip

    def free_count(self, taken: Iterable[IPv4Address] | None = None) -> int:
        """Free usable addresses, in ``taken`` (a reservations snapshot) or read now."""
        if taken is None:
            with self.store.lock():
                taken = list(self.store.reservations())
        return self.size - sum(1 for ip in taken if self.usable(ip))


def release(store: Store, container_id: str, ifname: str) -> list[IPv4Address]:
    """DEL: free every address held by this attachment (no subnet needed)."""
    released = []
    with store.lock():
        for ip, owner in store.reservations().items():
            if _matches(owner, container_id, ifname):
                store.release(ip)
                released.append(ip)
                log.info("IPAM: released %s held by %s/%s", ip, owner[0], owner[1])
    return released


def release_ip(store: Store, ip: IPv4Address, container_id: str, ifname: str) -> None:
    """Rollback of one allocation: only if the file still holds this attachment."""
    with store.lock():
        owner = store.reservations().get(ip)
        if owner is not None and _matches(owner, container_id, ifname):
            store.release(ip)
            log.info("IPAM: rolled back %s for %s/%s", ip, container_id, ifname)


def get(store: Store, container_id: str, ifname: str) -> list[IPv4Address]:
    with store.lock():
        return sorted(ip for ip, owner in store.reservations().items()
                      if _matches(owner, container_id, ifname))


def gc(store: Store, valid: Iterable[Attachment]) -> list[tuple[IPv4Address, Attachment]]:
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
