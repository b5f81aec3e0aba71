"""``deadline()``: fail a test whose reader blocks (as open() of a FIFO does), rather
than hang the suite."""

import contextlib
import signal
from collections.abc import Iterator


@contextlib.contextmanager
def deadline(seconds: float = 3.0) -> Iterator[None]:
    def expire(signum, frame):
        raise TimeoutError(f"blocked for {seconds}s: the reader waited on the file")
    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
