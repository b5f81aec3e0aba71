"""IPAM: the allocator against the disk store and the fake, and host-local's layout."""

import errno
import os
import stat
import threading
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

import pytest

from overlay.cni import ipam
from overlay.errors import IPAMError
from tests.fakes import FakeStore

SUBNET = IPv4Network("10.30.1.0/29")  # .1 gateway, .2-.6 usable, .7 broadcast
GW = IPv4Address("10.30.1.1")


@pytest.fixture(params=["disk", "fake"])
def store(request, tmp_path):
    if request.param == "disk":
        return ipam.DiskStore(str(tmp_path), "ovcni-net")
    return FakeStore()


def alloc(store):
    return ipam.Allocator(store, SUBNET, GW)


def test_round_robin_skips_network_gateway_broadcast(store):
    a = alloc(store)
    got = [a.allocate(f"c{i}", "eth0") for i in range(5)]
    assert got == [IPv4Address(f"10.30.1.{i}") for i in range(2, 7)]
    assert a.size == 5 and a.free_count() == 0


def test_exhaustion_then_reuse_continues_round_robin(store):
    a = alloc(store)
    for i in range(5):
        a.allocate(f"c{i}", "eth0")
    with pytest.raises(IPAMError, match="no IP addresses available"):
        a.allocate("c9", "eth0")
    assert ipam.release(store, "c1", "eth0") == [IPv4Address("10.30.1.3")]
    assert a.allocate("c9", "eth0") == IPv4Address("10.30.1.3")


def test_round_robin_does_not_reuse_a_just_released_address(store):
    a = alloc(store)
    first = a.allocate("c0", "eth0")
    ipam.release(store, "c0", "eth0")
    assert a.allocate("c1", "eth0") != first


def test_duplicate_attachment_is_refused_and_first_kept(store):
    a = alloc(store)
    ip = a.allocate("c0", "eth0")
    with pytest.raises(IPAMError, match="duplicate"):
        a.allocate("c0", "eth0")
    assert ipam.get(store, "c0", "eth0") == [ip]
    assert a.allocate("c0", "net1") != ip  # another interface of the same container is fine


def test_requested_ip(store):
    a = alloc(store)
    assert a.allocate("c0", "eth0", IPv4Address("10.30.1.5")) == IPv4Address("10.30.1.5")
    with pytest.raises(IPAMError, match="already allocated"):
        a.allocate("c1", "eth0", IPv4Address("10.30.1.5"))
    for bad in ("10.30.1.1", "10.30.1.0", "10.30.1.7", "10.30.2.5"):
        with pytest.raises(IPAMError, match="not usable"):
            a.allocate("c2", "eth0", IPv4Address(bad))


def test_release_only_the_attachment(store):
    a = alloc(store)
    a.allocate("c0", "eth0")
    keep = a.allocate("c0", "net1")
    other = a.allocate("c1", "eth0")
    ipam.release(store, "c0", "eth0")
    assert set(store.reservations()) == {keep, other}
    assert ipam.release(store, "c0", "eth0") == []  # second release: nothing, no error


def test_release_ip_rolls_back_only_its_own_reservation(store):
    a = alloc(store)
    ip = a.allocate("c0", "eth0")
    ipam.release_ip(store, ip, "c1", "eth0")
    assert ip in store.reservations()
    ipam.release_ip(store, ip, "c0", "eth0")
    assert ip not in store.reservations()


def test_gc_releases_everything_not_valid(store):
    a = alloc(store)
    a.allocate("c0", "eth0")
    a.allocate("c1", "eth0")
    a.allocate("c2", "eth0")
    stale = ipam.gc(store, [("c1", "eth0")])
    assert sorted(owner for _, owner in stale) == [("c0", "eth0"), ("c2", "eth0")]
    assert list(store.reservations().values()) == [("c1", "eth0")]


def test_disk_layout_is_host_local(tmp_path):
    store = ipam.DiskStore(str(tmp_path), "ovcni-net")
    a = alloc(store)
    ip = a.allocate("c0", "eth0")
    d = tmp_path / "ovcni-net"
    assert sorted(os.listdir(d)) == ["10.30.1.2", "last_reserved_ip.0", "lock"]
    assert (d / "10.30.1.2").read_bytes() == b"c0\r\neth0"
    assert (d / "last_reserved_ip.0").read_bytes() == b"10.30.1.2"
    for name in os.listdir(d):
        mode = stat.S_IMODE(os.stat(d / name).st_mode)
        assert not mode & 0o022, f"{name} is group/world-writable: {oct(mode)}"
    assert ip == IPv4Address("10.30.1.2")


def test_disk_store_reads_files_written_by_host_local(tmp_path):
    d = tmp_path / "ovcni-net"
    d.mkdir()
    (d / "10.30.1.4").write_bytes(b"old-container\r\neth0")
    (d / "10.30.1.5").write_bytes(b"legacy-container")  # pre-ifname format
    (d / "last_reserved_ip.0").write_bytes(b"10.30.1.5")
    store = ipam.DiskStore(str(tmp_path), "ovcni-net")
    a = alloc(store)
    assert a.allocate("new", "eth0") == IPv4Address("10.30.1.6")  # after last reserved
    assert a.allocate("new2", "eth0") == IPv4Address("10.30.1.2")  # wraps, skips gateway
    assert ipam.release(store, "legacy-container", "eth0") == [IPv4Address("10.30.1.5")]


def test_disk_store_concurrent_allocations_are_distinct(tmp_path):
    subnet = IPv4Network("10.31.0.0/24")
    results, errors = [], []

    def worker(i):
        # each thread its own store object, as separate plugin processes would have
        a = ipam.Allocator(ipam.DiskStore(str(tmp_path), "ovcni-net"), subnet,
                           IPv4Address("10.31.0.1"))
        try:
            results.append(a.allocate(f"c{i}", "eth0"))
        except Exception as e:  # noqa: BLE001 - collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(60)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(set(results)) == 60


def test_unreadable_store_dir_is_an_ipam_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    store = ipam.DiskStore(str(blocker), "ovcni-net")
    with pytest.raises(IPAMError, match="cannot open IPAM store"):
        alloc(store).allocate("c0", "eth0")


def test_failing_to_record_the_last_address_gives_the_address_back(tmp_path, monkeypatch):
    def disk_full(dfd, ip, range_id=0):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    store = ipam.DiskStore(str(tmp_path), "ovcni-net")
    monkeypatch.setattr(ipam.DiskStore, "_write_last", staticmethod(disk_full))
    with pytest.raises(IPAMError, match="cannot record 10.30.1.2"):
        alloc(store).allocate("c0", "eth0")
    assert store.reservations() == {}  # not left reserved for a failed ADD


def test_unlistable_store_dir_is_an_ipam_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(IPAMError, match="cannot read IPAM store"):
        ipam.DiskStore(str(tmp_path), "file").reservations()  # ENOTDIR, not ENOENT


def test_files_that_are_not_addresses_in_the_layouts_text_are_skipped(tmp_path):
    store = ipam.DiskStore(str(tmp_path), "ovcni-net")
    alloc(store).allocate("c0", "eth0")
    for name in ("10.30.1", "1.2.3.4.5", "999.1.1.1", "2001:0db8::5", "2001:DB8::5",
                 "fe80::1%eth0", "2001:db8::5::1", "last_reserved_ip.1"):
        with open(os.path.join(store.dir, name), "w") as f:
            f.write("cX\r\neth0")
    with open(os.path.join(store.dir, "2001:db8::5"), "w") as f:
        f.write("c6\r\neth0")  # canonical IPv6 text: a reservation, as host-local's
    assert store.reservations() == {IPv4Address("10.30.1.2"): ("c0", "eth0"),
                                    IPv6Address("2001:db8::5"): ("c6", "eth0")}


def test_an_id_with_a_trailing_newline_is_another_owner(tmp_path):
    store = ipam.DiskStore(str(tmp_path), "ovcni-net")
    ip = alloc(store).allocate("c1", "eth0")
    assert ipam.release(store, "c1\n", "eth0") == []  # was stripped into "c1" and freed it
    assert ipam.get(store, "c1", "eth0") == [ip]


@pytest.mark.parametrize("planted", [ipam.LAST_IP_FILE, ipam.LOCK_FILE])
def test_a_symlink_planted_in_the_store_is_not_followed(tmp_path, planted):
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    d = tmp_path / "ovcni-net"
    d.mkdir()
    (d / planted).symlink_to(victim)
    store = ipam.DiskStore(str(tmp_path), "ovcni-net")
    with pytest.raises(IPAMError, match="symlink"):
        alloc(store).allocate("c1", "eth0")
    assert victim.read_bytes() == b"precious"
    left = {p.name for p in d.iterdir()} - {ipam.LOCK_FILE, planted}
    assert not left  # no reservation left behind


def test_a_symlinked_ip_file_is_neither_read_nor_written(tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"c9\r\neth0")
    d = tmp_path / "ovcni-net"
    d.mkdir()
    (d / "10.30.1.2").symlink_to(victim)
    os.mkfifo(d / "10.30.1.3")  # reading a FIFO would block the ADD forever
    store = ipam.DiskStore(str(tmp_path), "ovcni-net")
    assert store.reservations() == {}
    assert alloc(store).allocate("c1", "eth0") == IPv4Address("10.30.1.4")
    assert victim.read_bytes() == b"c9\r\neth0"


def test_a_symlinked_store_dir_is_refused(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "ovcni-net").symlink_to(elsewhere)
    store = ipam.DiskStore(str(tmp_path), "ovcni-net")
    with pytest.raises(IPAMError, match="symlink"):
        alloc(store).allocate("c1", "eth0")
    assert list(elsewhere.iterdir()) == []


# --- two ranges: one per family (dual-stack) ----------------------------------------------

SUBNET6 = IPv6Network("fd00:30:1::/125")  # ::1 gateway, ::2-::7 usable (no broadcast in IPv6)
GW6 = IPv6Address("fd00:30:1::1")


def both(store):
    return [ipam.Allocator(store, SUBNET, GW, 0), ipam.Allocator(store, SUBNET6, GW6, 1)]


def test_ipv6_range_ends_at_the_last_address_and_skips_network_and_gateway(store):
    a = ipam.Allocator(store, SUBNET6, GW6, 1)
    got = [a.allocate(f"c{i}", "eth0") for i in range(6)]
    assert got == [IPv6Address(f"fd00:30:1::{i}") for i in range(2, 8)]
    assert a.size == 6 and a.free_count() == 0
    with pytest.raises(IPAMError, match="no IP addresses available in fd00:30:1::/125"):
        a.allocate("c9", "eth0")


def test_one_address_per_family_for_one_attachment(store):
    v4, v6 = ipam.allocate_all(store, both(store), "c0", "eth0")
    assert (v4, v6) == (IPv4Address("10.30.1.2"), IPv6Address("fd00:30:1::2"))
    assert ipam.get(store, "c0", "eth0") == [v4, v6]  # IPv4 first: sorted across families
    assert ipam.allocate_all(store, both(store), "c1", "eth0") == [
        IPv4Address("10.30.1.3"), IPv6Address("fd00:30:1::3")]
    # each range counts only its own family's reservations
    assert [a.free_count() for a in both(store)] == [3, 4]


def test_each_range_keeps_its_own_last_reserved_file(tmp_path):
    store = ipam.DiskStore(str(tmp_path), "ovcni-net")
    ipam.allocate_all(store, both(store), "c0", "eth0")
    d = tmp_path / "ovcni-net"
    assert sorted(os.listdir(d)) == ["10.30.1.2", "fd00:30:1::2", "last_reserved_ip.0",
                                     "last_reserved_ip.1", "lock"]
    assert (d / "fd00:30:1::2").read_bytes() == b"c0\r\neth0"
    assert (d / "last_reserved_ip.0").read_bytes() == b"10.30.1.2"
    assert (d / "last_reserved_ip.1").read_bytes() == b"fd00:30:1::2"
    # round robin goes on per range: after ::5 in range 1, whatever range 0 says
    (d / "last_reserved_ip.1").write_bytes(b"fd00:30:1::5")
    assert ipam.allocate_all(store, both(store), "c1", "eth0") == [
        IPv4Address("10.30.1.3"), IPv6Address("fd00:30:1::6")]


def test_a_last_reserved_file_of_the_other_family_is_ignored(tmp_path):
    store = ipam.DiskStore(str(tmp_path), "ovcni-net")
    d = tmp_path / "ovcni-net"
    d.mkdir()
    (d / "last_reserved_ip.1").write_bytes(b"10.30.1.4")  # hand-edited, wrong family
    (d / "last_reserved_ip.0").write_bytes(b"fd00:30:1::4")
    assert ipam.allocate_all(store, both(store), "c0", "eth0") == [
        IPv4Address("10.30.1.2"), IPv6Address("fd00:30:1::2")]


def test_a_failing_second_range_gives_the_first_address_back(store):
    a4, a6 = both(store)
    for i in range(6):
        a6.allocate(f"x{i}", "eth0")  # IPv6 range full
    with pytest.raises(IPAMError, match="no IP addresses available in fd00:30:1::/125"):
        ipam.allocate_all(store, [a4, a6], "c0", "eth0")
    assert ipam.get(store, "c0", "eth0") == []
    assert a4.free_count() == 5


def test_requested_ip_per_family(store):
    want: dict[int, ipam.IPAddress] = {4: IPv4Address("10.30.1.5"),
                                       6: IPv6Address("fd00:30:1::7")}
    assert ipam.allocate_all(store, both(store), "c0", "eth0", want) == [want[4], want[6]]
    with pytest.raises(IPAMError, match="requested IP fd00:30:1::7 is already allocated"):
        ipam.allocate_all(store, both(store), "c1", "eth0", {6: want[6]})
    assert ipam.get(store, "c1", "eth0") == []  # its IPv4 address was given back
    with pytest.raises(IPAMError, match="not usable"):
        ipam.allocate_all(store, both(store), "c2", "eth0", {6: GW6})


def test_duplicate_is_judged_per_family(store):
    a4, a6 = both(store)
    a4.allocate("c0", "eth0")
    assert a6.allocate("c0", "eth0") == IPv6Address("fd00:30:1::2")  # not a duplicate
    with pytest.raises(IPAMError, match="duplicate"):
        a6.allocate("c0", "eth0")


def test_release_and_gc_free_both_families(store):
    ipam.allocate_all(store, both(store), "c0", "eth0")
    ipam.allocate_all(store, both(store), "c1", "eth0")
    assert ipam.release(store, "c0", "eth0") and ipam.get(store, "c0", "eth0") == []
    stale = ipam.gc(store, [])
    assert sorted((str(ip), owner) for ip, owner in stale) == [
        ("10.30.1.3", ("c1", "eth0")), ("fd00:30:1::3", ("c1", "eth0"))]
    assert store.reservations() == {}
