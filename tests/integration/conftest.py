import pytest

from .support.etcd_server import EtcdServer


@pytest.fixture
def etcd_server():
    """A fresh single-member etcd on a free loopback port, removed afterwards."""
    server = EtcdServer().start()
    try:
        yield server
    finally:
        server.cleanup()
