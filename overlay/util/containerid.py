"""The one rule for a container ID (CNI_CONTAINERID, and the ID in a pod record): a pure
check, no I/O, so the CNI plugin and the pod registry agree on every value."""

from __future__ import annotations

import re

# The SPEC's characters (letters, digits, '_', '.', '-', starting with a letter or digit),
# as a whole-string rule: ``re.match("...$")`` also accepts a trailing newline, and "c1\n"
# would then name other files and veths than "c1" (two pods, one IP). Runtimes use 64 hex
# digits; the bound keeps every name built from an ID within Linux's limits.
CONTAINER_ID_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.\-]*")
MAX_CONTAINER_ID = 256


def container_id_problem(value: object) -> str | None:
    """What makes ``value`` unusable as a container ID, or None."""
    if not isinstance(value, str) or not value:
        return "is empty"
    if len(value) > MAX_CONTAINER_ID:
        return f"is {len(value)} characters long (at most {MAX_CONTAINER_ID})"
    if not CONTAINER_ID_RE.fullmatch(value):
        return ("must start with a letter or digit and contain only letters, digits, "
                "'_', '.' and '-'")
    return None
