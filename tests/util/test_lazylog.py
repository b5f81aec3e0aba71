import logging

import pytest

from overlay.util import lazylog


@pytest.fixture
def restore(monkeypatch):
    """defer() changes module state: every test starts and ends undeferred."""
    monkeypatch.setattr(lazylog, "_drop_below", 0)
    monkeypatch.setattr(lazylog, "_set_up", None)


def test_undeferred_records_reach_logging_under_the_callers_name(restore, caplog):
    log = lazylog.get_logger("overlay.test.lazy")
    with caplog.at_level(logging.DEBUG, logger="overlay.test.lazy"):
        log.debug("d %s", 1)
        log.info("i %s", 2)
        log.warning("w")
        log.error("e")
    assert [(r.name, r.levelname, r.getMessage()) for r in caplog.records] == [
        ("overlay.test.lazy", "DEBUG", "d 1"), ("overlay.test.lazy", "INFO", "i 2"),
        ("overlay.test.lazy", "WARNING", "w"), ("overlay.test.lazy", "ERROR", "e")]
    # stacklevel: the record points at this test, not at lazylog
    assert {r.funcName for r in caplog.records} == {
        "test_undeferred_records_reach_logging_under_the_callers_name"}


def test_deferred_drops_below_the_level_and_sets_up_once(restore, caplog):
    calls = []
    lazylog.defer(lazylog.WARNING, lambda: calls.append("set up"))
    log = lazylog.get_logger("overlay.test.deferred")
    with caplog.at_level(logging.DEBUG, logger="overlay.test.deferred"):
        log.info("dropped")
        log.debug("dropped too")
        assert calls == [] and caplog.records == []
        log.warning("kept %d", 1)
        log.error("kept %d", 2)
    assert calls == ["set up"]
    assert [r.getMessage() for r in caplog.records] == ["kept 1", "kept 2"]


def test_exception_carries_the_exception_being_handled(restore, caplog):
    log = lazylog.get_logger("overlay.test.exc")
    with caplog.at_level(logging.ERROR, logger="overlay.test.exc"):
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed")
    (record,) = caplog.records
    assert record.exc_info is not None and record.exc_info[0] is ValueError
