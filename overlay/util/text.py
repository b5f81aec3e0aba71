"""Plain-text output shared by the command-line tools (pure: values in, a string out)."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any


def rfc3339(when: datetime) -> str:
    """``2026-12-01T22:59:39Z``: UTC, whole seconds, the one time format of every output."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _wrap(cell: str, width: int | None) -> list[str]:
    if width is None or len(cell) <= width:
        return [cell]
    return textwrap.wrap(cell, width, break_long_words=True, break_on_hyphens=False) or [""]


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]],
                 wrap: int | None = None) -> str:
    """A kubectl-style table: upper-case headers, columns padded by three spaces, a
    missing value (None) shown as ``<none>``; no trailing blanks, no final newline.

    With ``wrap``, a cell longer than that many characters continues on the next lines of
    its column (nothing is cut); the other columns stay blank on those lines."""
    cells = [[str(h) for h in headers]] + [["<none>" if c is None else str(c) for c in r]
                                           for r in rows]
    lines: list[list[str]] = []
    for row in cells:
        parts = [_wrap(c, wrap) for c in row]
        for i in range(max((len(p) for p in parts), default=1)):
            lines.append([p[i] if i < len(p) else "" for p in parts])
    widths = [max(len(r[i]) for r in lines) for i in range(len(headers))]
    # Not strict: a row longer than the headers is cut, as it always was.
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)).rstrip()
                     for r in lines)


def age(since: datetime, now: datetime | None = None) -> str:
    """kubectl's AGE: ``45s``, ``12m``, ``5h``, ``3d`` (the largest whole unit; a time in
    the future, from a skewed clock, is ``0s``)."""
    seconds = int(((now or datetime.now(UTC)) - since).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"
