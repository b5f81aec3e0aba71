"""The one rule for a duration in seconds, which overlayd's flags and overlayctl's
timeouts both use (their messages are tests/daemon/test_daemon_flags.py and
tests/cli/test_bad_values.py)."""

from __future__ import annotations

import pytest

from overlay.util.seconds import seconds_problem


@pytest.mark.parametrize("value", [0.1, 1, 86400, 3600.0])
def test_a_finite_value_within_the_bounds_passes(value):
    assert seconds_problem(value, 0.1, 86400) is None


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"), 0.05, 86401,
                                   -1])
def test_nan_infinity_and_values_outside_fail(value):
    assert seconds_problem(value, 0.1, 86400) == (
        "must be a number of seconds from 0.1 to 86400 (a day)")


def test_a_bound_of_whole_hours_or_days_is_also_said_in_words():
    assert seconds_problem(0, 1, 7200) == "must be a number of seconds from 1 to 7200 (2 hours)"
    assert str(seconds_problem(0, 1, 3600)).endswith("(an hour)")
    assert str(seconds_problem(0, 1, 600)).endswith("to 600")
