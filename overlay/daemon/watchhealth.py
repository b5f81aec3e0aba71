"""How live the lease watch is: for /readyz and the lag metric.

A watch can fail without a sound: its thread crashed and is waiting to restart, its
stream is open but etcd (or a half-open connection) has gone silent, or the consumer is
stuck and no longer reads the stream.  The watch asks etcd for a progress notification
after every ``progress_interval`` of silence and reports every answer it reads here
(``heard``); the lag is how long ago that last happened.  Pure bookkeeping, thread-safe,
no I/O.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

DEFAULT_MAX_LAG = 30.0  # seconds without a word from etcd before /readyz says 503
PROGRESS_PER_LIMIT = 4  # progress requests per lag limit: three may go unanswered


def progress_interval(max_lag: float) -> float:
    """How long the lease watch may be silent before it asks etcd for progress: a quarter
    of the lag limit, so a live watch never looks stale.  Scaled with the limit, not
    capped: each node's request costs etcd an answer (1000 nodes at the default 30 s:
    133 requests/s), so a large cluster lowers that load by raising ``--watch-lag-limit``."""
    return max(0.05, max_lag / PROGRESS_PER_LIMIT)


class WatchHealth:
    def __init__(self, max_lag: float = DEFAULT_MAX_LAG,
                 clock: Callable[[], float] = time.monotonic):
        self.max_lag = max_lag
        self._clock = clock
        self._lock = threading.Lock()
        self._running = False
        self._since: float | None = None  # the watch's first start: where lag counts from
        self._heard: float | None = None
        self.revision = 0

    def started(self) -> None:
        """The watch (its listing, then its stream) is running."""
        with self._lock:
            self._running = True
            if self._since is None:  # a restart must not reset the lag: a crash loop lags
                self._since = self._clock()

    def stopped(self) -> None:
        with self._lock:
            self._running = False

    def heard(self, revision: int) -> None:
        """etcd answered on the watch stream, at store revision ``revision``."""
        with self._lock:
            self._heard = self._clock()
            self.revision = max(self.revision, revision)

    def lag(self) -> float:
        """Seconds since etcd was last heard on the watch (since its start if never);
        -1 before the watch first started."""
        with self._lock:
            last = self._heard if self._heard is not None else self._since
            return -1.0 if last is None else max(0.0, self._clock() - last)

    def problem(self) -> str | None:
        """Why the watch cannot be trusted to be current, or None."""
        with self._lock:
            running, never = self._running, self._heard is None
        if self._since is None:
            return "lease watch not started"
        lag = self.lag()
        if not running:
            return "lease watch not running (it failed and is restarting)"
        if lag > self.max_lag:
            what = "has not heard from etcd" if not never else "has not reached etcd"
            return f"lease watch {what} for {lag:.0f}s (limit {self.max_lag:g}s)"
        return None
