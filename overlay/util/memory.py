"""Keep the C allocator's heap small: fixed mmap threshold, and free memory given back.

A full lease listing or a reconcile of thousands of remotes allocates megabytes for a
moment (etcd's JSON pages, decoded values, the kernel dump's buffers), much of it in the
C heap of whichever thread ran it.  Two glibc habits
would keep the daemon's RSS at the peak of its largest listing:

- freed chunks stay in each thread's arena: ``release_free_memory`` (``malloc_trim``,
  after every reconcile) returns the free pages (at 10 000 leases the settled RSS went
  from 82 to 70 MB);
- the mmap threshold is dynamic: once a large mmapped block is freed, glibc raises the
  threshold to its size (up to 32 MB), so the next listing's large blocks come from the
  arenas instead, and fragment them when freed.  ``keep_heap_small`` (at overlayd's
  start) fixes the threshold at glibc's default, 128 KiB, so a block that large always
  gets a mapping of its own, unmapped when freed (``bench/bench_scale.py``: -5 MB at
  5000 leases).  It is what ``MALLOC_MMAP_THRESHOLD_=131072`` in the environment does,
  made the daemon's own so no deployment has to know it.  The price is one mmap and
  munmap per such block: a few per listing or reconcile.

Without glibc both do nothing.
"""

from __future__ import annotations

import ctypes

# the process's own symbols, libc's among them, without a library search (ldconfig)
_libc = ctypes.CDLL(None)
_trim = getattr(_libc, "malloc_trim", None)
_mallopt = getattr(_libc, "mallopt", None)
# glibc's malloc.h
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 128 * 1024  # glibc's default, fixed instead of raised by each free


def keep_heap_small(threshold: int = MMAP_THRESHOLD) -> bool:
    """Serve every block of ``threshold`` bytes or more with its own mapping, and trim
    the heap's top beyond that much free; False where the allocator has no mallopt."""
    if _mallopt is None:
        return False
    return bool(_mallopt(M_MMAP_THRESHOLD, threshold)) and bool(
        _mallopt(M_TRIM_THRESHOLD, threshold))


def release_free_memory() -> None:
    """Return the C heap's free pages to the kernel (it walks the free lists once)."""
    if _trim is not None:
        _trim(0)
