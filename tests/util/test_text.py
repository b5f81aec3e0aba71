"""overlay.util.text: the table and time formats every command prints."""

from datetime import UTC, datetime, timedelta, timezone

from overlay.util.text import age, format_table, rfc3339


def test_rfc3339_is_utc_whole_seconds_with_z():
    when = datetime(2026, 12, 1, 23, 59, 39, 611847, tzinfo=timezone(timedelta(hours=1)))
    assert rfc3339(when) == "2026-12-01T22:59:39Z"
    assert rfc3339(datetime(2026, 12, 1, tzinfo=UTC)) == "2026-12-01T00:00:00Z"


def test_table_without_wrap_is_unchanged():
    assert format_table(["A", "B"], [["x", None], ["long-cell", 1]]) == (
        "A           B\nx           <none>\nlong-cell   1")


def test_a_long_cell_wraps_in_its_column_and_nothing_is_cut():
    found = "route 10.244.2.0/24 via 10.244.2.0 dev overlay.1 is missing and so is the neigh"
    out = format_table(["CHECK", "STATUS", "FOUND"],
                       [["routes", "FAIL", found], ["mtu", "pass", "1450"]], wrap=30)
    lines = out.splitlines()
    assert "..." not in out and len(lines) == 1 + 3 + 1
    col = lines[0].index("FOUND")
    assert " ".join(line[col:] for line in lines[1:4]) == found
    assert all(line[:col].strip() == "" for line in lines[2:4])  # continuation: other cells blank
    assert lines[1].startswith("routes   FAIL") and lines[4].split() == ["mtu", "pass", "1450"]
    assert all(len(line[col:]) <= 30 for line in lines)


def test_age_reads_like_kubectl():
    assert [age(s) for s in (-3, 0, 59, 60, 61, 599, 600, 3599, 3600, 86399, 86400,
                             90000, 10 * 86400 + 3600)] == [
        "0s", "0s", "59s", "1m", "1m1s", "9m59s", "10m", "59m", "1h", "23h", "1d", "1d1h",
        "10d"]
