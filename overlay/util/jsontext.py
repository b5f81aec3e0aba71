"""The one way untrusted JSON text becomes Python values (pure, stdlib only).

``json.loads`` raises RecursionError, not ValueError, for a document nested deeper than
the interpreter's stack: ``[[[[...`` of a few thousand brackets, far under every size bound
the readers set. A reader catching ValueError alone would let such a value escape as an
exception its callers never expect (a watch, a compile, a CLI's traceback). Whatever reads
JSON from etcd, a file or a peer calls :func:`loads` and gets one kind of error, ValueError,
for every way the text can be wrong (UnicodeDecodeError is one)."""

from __future__ import annotations

import json
from typing import Any


class NestedTooDeeply(ValueError):
    """The document nests deeper than the interpreter can decode."""


def loads(data: str | bytes, **kwargs: Any) -> Any:
    """``json.loads(data, **kwargs)``; ValueError for anything that is not a JSON document,
    :class:`NestedTooDeeply` included."""
    try:
        return json.loads(data, **kwargs)
    except RecursionError:
        raise NestedTooDeeply("nested too deeply") from None
