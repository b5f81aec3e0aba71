"""The daemon's memory per remote lease and the C heap it gives back.

Thousands of leases are held at once (bench/bench_scale.py: RSS targets at 5000 and
10 000), so the per-lease values must stay dict-free and the C heap of a transient
peak must go back to the kernel."""

from __future__ import annotations

import ctypes
import json
import subprocess
import sys
from ipaddress import IPv4Address, IPv4Network

import pytest

from overlay.lease import EventType, Lease, LeaseAttrs, LeaseEvent
from overlay.util.memory import release_free_memory
from overlay.vxlan.entries import FDB, Neigh, Route


def rss_anon_kb() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("RssAnon:"))


def test_per_lease_values_carry_no_instance_dict():
    attrs = LeaseAttrs(IPv4Address("192.168.1.11"), vtep_mac="0e:00:00:00:00:01")
    lease = Lease(IPv4Network("10.244.1.0/24"), attrs)
    gw = lease.subnet.network_address
    values = [attrs, lease, LeaseEvent(EventType.ADDED, lease), Neigh(gw, "0e:00:00:00:00:01"),
              FDB("0e:00:00:00:00:01", attrs.public_ip), Route(lease.subnet, gw)]
    for v in values:
        assert not hasattr(v, "__dict__"), type(v).__name__


def test_decoded_backend_types_are_one_string():
    raw = [json.dumps({"PublicIP": f"192.168.1.{i}", "BackendType": "vx" + "lan"})
           for i in (11, 12)]
    a, b = (LeaseAttrs.from_json(r) for r in raw)
    assert a.backend_type is b.backend_type


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_release_free_memory_returns_a_freed_heap_to_the_kernel():
    malloc = ctypes.CDLL(None).malloc
    free = ctypes.CDLL(None).free
    malloc.restype = ctypes.c_void_p
    free.argtypes = [ctypes.c_void_p]
    # 64 MB in 4 KB chunks (below the mmap threshold: the heap), the last one kept so
    # that the heap's top cannot shrink by itself: only a trim gives the rest back.
    chunks = [malloc(4096) for _ in range(16384)]
    for c in chunks:
        ctypes.memset(c, 1, 4096)
    for c in chunks[:-1]:
        free(c)
    held = rss_anon_kb()
    release_free_memory()
    try:
        assert held - rss_anon_kb() > 32 * 1024, (held, rss_anon_kb())
    finally:
        free(chunks[-1])


CHILD = """
import ctypes, sys
from overlay.util.memory import keep_heap_small
libc = ctypes.CDLL(None)
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks",
                "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
if sys.argv[1] == "fixed":
    assert keep_heap_small()
libc.free(libc.malloc(8 << 20))  # glibc would raise its threshold to 8 MB here
before = libc.mallinfo2().hblks
block = libc.malloc(1 << 20)
print(libc.mallinfo2().hblks - before)
libc.free(block)
"""


def mmapped_blocks(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True,
                         check=True).stdout
    return int(out)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_a_large_block_keeps_its_own_mapping_after_a_larger_one_was_freed():
    assert mmapped_blocks("dynamic") == 0  # glibc's default: it came from the heap
    assert mmapped_blocks("fixed") == 1
