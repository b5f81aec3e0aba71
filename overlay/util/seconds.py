"""The one rule for a duration given in seconds (overlayd's flags, overlayctl's timeouts):
a finite number within bounds (pure). NaN and infinity fail it: NaN would make a wait
return at once (a busy loop, or a watch that never ends), infinity overflows the wait."""

from __future__ import annotations

import math


def seconds_problem(value: float, low: float, high: float) -> str | None:
    """What is wrong with ``value`` as a number of seconds in ``low..high`` (both
    inclusive), said as the end of an error line; None when nothing is."""
    if (isinstance(value, int) or math.isfinite(value)) and low <= value <= high:
        return None
    return f"must be a number of seconds from {low:g} to {high:g}{_human(high)}"


def _human(seconds: float) -> str:
    """`` (a day)``-style words for a bound of whole days or hours, else nothing."""
    for unit, name in ((86400, "day"), (3600, "hour")):
        if seconds >= unit and seconds % unit == 0:
            n = int(seconds // unit)
            return f" ({'an' if name == 'hour' else 'a'} {name})" if n == 1 else f" ({n} {name}s)"
    return ""
