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


def container_id_problem(value: object, bounded: bool = True) -> str | None:
    """What makes ``value`` unusable as a container ID, or None. ``bounded=False`` waives
    the length bound (the plugin's DEL and CHECK: a runtime cleaning up after a refused
    ADD must not be refused again; nothing can be attached under a longer ID)."""
    if not isinstance(value, str) or not value:
        return "is empty"
    if bounded and len(value) > MAX_CONTAINER_ID:
        return f"is too long: {len(value)} characters (at most {MAX_CONTAINER_ID})"
    if not CONTAINER_ID_RE.fullmatch(value):
        return ("has invalid characters: it must start with a letter or digit and contain "
                "only letters, digits, '_', '.' and '-'")
    return None
