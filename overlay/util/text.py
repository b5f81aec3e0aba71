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


def age(seconds: float) -> str:
    """kubectl's AGE: ``42s``, ``5m10s`` under 10 minutes, ``3h``, ``2d4h``, ``12d``."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 600:
        return f"{s // 60}m{s % 60}s" if s % 60 else f"{s // 60}m"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h"
    days, hours = divmod(s // 3600, 24)
    return f"{days}d{hours}h" if days < 10 and hours else f"{days}d"
