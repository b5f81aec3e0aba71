"""Give the C allocator's free memory back to the kernel after a transient peak.

A full lease listing or a reconcile of thousands of remotes allocates megabytes for a
moment (etcd's protobuf response, decoded values, the kernel dump), much of it in the
C heap of whichever thread ran it (gRPC's threads and ours).  glibc keeps freed chunks
in each thread's arena, so the daemon's RSS would stay at the peak of its largest
listing; ``malloc_trim`` returns the free pages (at 10 000 leases the settled RSS went
from 82 to 70 MB: ``bench/bench_scale.py``).  Without glibc it does nothing.
"""

from __future__ import annotations

import ctypes

# the process's own symbols, libc's among them, without a library search (ldconfig)
_trim = getattr(ctypes.CDLL(None), "malloc_trim", None)


def release_free_memory() -> None:
    """Return the C heap's free pages to the kernel (it walks the free lists once)."""
    if _trim is not None:
        _trim(0)
