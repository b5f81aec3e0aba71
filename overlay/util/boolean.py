"""The one spelling of true/false in flags, environment variables and subnet.env (pure).

Its own module, not ``overlay.config``: the CNI plugin reads subnet.env on every ADD and
must not import the network config's parser (dataclasses, difflib) to do so."""

from __future__ import annotations


def parse_bool(text: str) -> bool | None:
    """true/false as flags, env vars and subnet.env spell them; None if neither."""
    v = text.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off", ""):
        return False
    return None
