"""Loggers that import :mod:`logging` only when a record is kept.

The in-process CNI plugin (no warm server: one interpreter per call) keeps WARNING and
above on stderr, and its INFO lines only when ``OVERLAY_CNI_LOG_FILE`` names a file;
importing ``logging`` (traceback, threading, string, weakref) cost ~7 ms of every such
call for lines nobody keeps.  So the modules on the plugin's path log through
:func:`get_logger`, and the plugin calls :func:`defer`: records below the level are
dropped without the import, the first one at or above it sets ``logging`` up and is
written.  Everywhere else (overlayd, the warm server, the tests) :func:`defer` is never
called and every record goes to ``logging.getLogger(name)`` as usual.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

DEBUG, INFO, WARNING, ERROR = 10, 20, 30, 40  # logging's own values

_drop_below = 0
_set_up: Callable[[], None] | None = None


def defer(level: int, set_up: Callable[[], None]) -> None:
    """Drop records below ``level`` unseen; run ``set_up`` (which configures logging)
    before the first record at or above it."""
    global _drop_below, _set_up
    _drop_below, _set_up = level, set_up


def _backend(name: str) -> Any:
    global _set_up
    if _set_up is not None:
        set_up, _set_up = _set_up, None
        set_up()
    import logging

    return logging.getLogger(name)


class Logger:
    """The part of :class:`logging.Logger` the plugin's modules use."""

    __slots__ = ("_logger", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self._logger: Any = None

    def _log(self, level: int, msg: str, args: tuple[object, ...], exc_info: bool) -> None:
        if level < _drop_below:
            return
        if self._logger is None:
            self._logger = _backend(self.name)
        # stacklevel 3: the record names the caller of debug()/info()/..., not this module
        self._logger.log(level, msg, *args, exc_info=exc_info, stacklevel=3)

    def debug(self, msg: str, *args: object) -> None:
        self._log(DEBUG, msg, args, False)

    def info(self, msg: str, *args: object) -> None:
        self._log(INFO, msg, args, False)

    def warning(self, msg: str, *args: object) -> None:
        self._log(WARNING, msg, args, False)

    def error(self, msg: str, *args: object) -> None:
        self._log(ERROR, msg, args, False)

    def exception(self, msg: str, *args: object) -> None:
        """ERROR with the exception being handled, as ``logging`` does."""
        self._log(ERROR, msg, args, True)


def get_logger(name: str) -> Logger:
    return Logger(name)
