"""overlayd's record of rejected keys: logged and counted once per key revision, bounded."""

import logging

from overlay.daemon.daemon import RejectionLog
from overlay.daemon.http import Metrics
from overlay.lease import Rejection


def rej(i, rev=1, reason="bad-value"):
    return Rejection(f"/overlay/network/subnets/k{i}\n", reason, "why", rev)


def count(m, reason):
    return m.registry.get_sample_value("overlay_leases_rejected_total", {"reason": reason}) or 0


def test_logged_and_counted_once_per_key_revision(caplog):
    m = Metrics()
    log = RejectionLog(m)
    with caplog.at_level(logging.WARNING, logger="overlay.daemon.daemon"):
        log.note([rej(1)], [], True)
        log.note([rej(1)], [], False)  # the same revision again (a re-list, a retry)
        log.note([rej(1)], [], True)
        log.note([rej(1, rev=2)], [], False)  # a new revision of the key
    assert count(m, "bad-value") == 2
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and all("\n" not in line and "k1\\n" in line for line in lines)
    assert "k1" not in m.render().decode()  # the label is the reason, never the key


def test_bounded_and_cleared_by_deletes_and_complete_listings():
    m = Metrics()
    log = RejectionLog(m, limit=256)
    log.note([rej(i, reason="bad-key") for i in range(10_000)], [], False)
    assert len(log.entries) == 256 and count(m, "bad-key") == 10_000
    assert next(reversed(log.entries)) == rej(9999).key
    log.note([], [rej(9999).key], False)
    assert rej(9999).key not in log.entries
    log.note([rej(1)], [], True)
    assert list(log.entries) == [rej(1).key]
