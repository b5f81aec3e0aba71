"""Plain-text output shared by the command-line tools (pure: strings in, a string out)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A kubectl-style table: upper-case headers, columns padded by three spaces, a
    missing value (None) shown as ``<none>``; no trailing blanks, no final newline."""
    cells = [[str(h) for h in headers]] + [["<none>" if c is None else str(c) for c in r]
                                           for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    # Not strict: a row longer than the headers is cut, as it always was.
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)).rstrip()
                     for r in cells)
