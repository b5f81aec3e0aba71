"""Capped exponential backoff, the one used by every retry loop of the daemon."""

from __future__ import annotations

import threading


class Backoff:
    """``wait`` sleeps the current delay, then doubles it up to ``maximum``;
    ``reset`` after a success starts again from ``minimum``."""

    def __init__(self, minimum: float, maximum: float):
        self.minimum = minimum
        self.maximum = maximum
        self.delay = minimum

    def reset(self) -> None:
        self.delay = self.minimum

    def wait(self, stop: threading.Event) -> bool:
        """Sleep the current delay, or until ``stop`` is set (then True)."""
        stopped = stop.wait(self.delay)
        self.delay = min(self.delay * 2, self.maximum)
        return stopped
