"""Give the C allocator's free memory back to the kernel after a large transient.

A full lease listing or a reconcile of thousands of remotes allocates tens of
megabytes for a moment (etcd's protobuf response, decoded values, the kernel dump),
much of it in the C heap of whichever thread ran it (gRPC's and ours).  glibc keeps
freed chunks in each thread's arena, so the daemon's RSS would stay at the peak of
its largest listing for good; ``malloc_trim`` returns those pages (measured by
``bench/bench_scale.py``).  Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes

# the process's own symbols: libc's, without a library search (which runs ldconfig)
_trim = getattr(ctypes.CDLL(None), "malloc_trim", None)


def release_free_memory() -> None:
    """Return the C heap's free pages to the kernel (cheap: it walks the free lists once)."""
    if _trim is not None:
        _trim(0)
