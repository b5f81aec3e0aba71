import pytest

from overlay.cli import cli
from overlay.cluster.store import ObjectStore
from overlay.subnet.etcdconf import make_etcd_options
from overlay.subnet.registry import EtcdRegistry

from .support.etcd_server import EtcdServer


@pytest.fixture
def etcd_server():
    """A fresh single-member etcd on a free loopback port, removed afterwards."""
    server = EtcdServer().start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def store(etcd_server):
    """The cluster's object store on ``etcd_server``."""
    reg = EtcdRegistry(make_etcd_options(etcd_server.endpoint, timeout=3.0))
    try:
        yield ObjectStore(reg)
    finally:
        reg.close()


@pytest.fixture
def ctl(etcd_server):
    """``ctl(*args, input=None)``: overlayctl against ``etcd_server``, in process."""
    from click.testing import CliRunner

    runner = CliRunner()

    def run(*args, input=None):
        return runner.invoke(cli, ["--etcd-endpoints", etcd_server.endpoint, *args],
                             input=input, catch_exceptions=False)
    return run
