import os

import pytest


def pytest_collection_modifyitems(config, items):
    """Integration tests need root (namespaces, etcd data dirs); skip them clearly otherwise."""
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="integration tests need root")
    for item in items:
        if "integration" in item.nodeid.split(os.sep):
            item.add_marker(skip)
