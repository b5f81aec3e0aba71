import pytest


@pytest.fixture(autouse=True)
def no_runtime_file(monkeypatch):
    """overlayctl's unit tests never pick up a runtime file of this machine's overlayd
    (tests that want one name it)."""
    monkeypatch.setenv("OVERLAYCTL_RUNTIME_FILE", "")
