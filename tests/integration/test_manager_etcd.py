"""SubnetManager against a real etcd: races, restarts, expiry, renewal, reservations,
deletion under a running node, and a 3-member cluster losing a member."""

import queue
import random
import threading
import time
from ipaddress import IPv4Address, IPv4Network

import pytest

from overlay.config import parse_network_config
from overlay.errors import NoFreeSubnet
from overlay.lease import LeaseAttrs
from overlay.subnet.etcdconf import make_etcd_options
from overlay.subnet.manager import SubnetManager
from overlay.subnet.registry import EtcdRegistry

from .support.etcd_server import EtcdCluster, TcpProxy
from .test_registry import wait_for

pytestmark = pytest.mark.integration

CFG = parse_network_config({"Network": "10.244.0.0/16"})


def node_attrs(i):
    return LeaseAttrs(IPv4Address(f"192.168.{i // 250}.{i % 250 + 1}"),
                      vtep_mac=f"0e:00:00:00:{i // 256:02x}:{i % 256:02x}")


def one_subnet_cfg(n=1):
    return parse_network_config({"Network": "10.244.0.0/16", "SubnetMin": "10.244.1.0",
                                 "SubnetMax": f"10.244.{n}.0"})


@pytest.fixture
def opts(etcd_server):
    return make_etcd_options(etcd_server.endpoint, timeout=3.0)


@pytest.fixture
def registry(opts):
    reg = EtcdRegistry(opts)
    try:
        yield reg
    finally:
        reg.close()


class Node:
    """A daemon's lease half: a manager with keepalive and watch threads."""

    def __init__(self, registry, i, cfg=CFG, **kw):
        self.mgr = SubnetManager(registry, cfg, node_attrs(i), rng=random.Random(i), **kw)
        self.stop = threading.Event()
        self.leases: queue.Queue = queue.Queue()
        self.batches: queue.Queue = queue.Queue()
        self.threads = []
        self._seen: set[IPv4Network] = set()  # the remote subnets remote_subnets drained

    def start(self, lease=None, watch=True):
        lease = lease or self.mgr.acquire()
        self._spawn(self.mgr.run_keepalive, lease, self.stop, self.leases.put)
        if watch:
            self._spawn(self.mgr.run_watch, self.mgr.own_subnet, self.stop, self.batches.put)
        return lease

    def _spawn(self, fn, *args):
        t = threading.Thread(target=fn, args=args, daemon=True)
        t.start()
        self.threads.append(t)

    def remote_subnets(self, timeout=5.0):
        """Drain batches into the set of remote subnets seen so far."""
        seen = self._seen
        while True:
            try:
                b = self.batches.get(timeout=timeout)
            except queue.Empty:
                break
            seen |= {lease.subnet for lease in b.added}
            seen -= {lease.subnet for lease in b.removed}
            timeout = 0.05
        self._seen = seen
        return seen

    def close(self):
        self.stop.set()
        for t in self.threads:
            t.join(3)
            assert not t.is_alive(), "a manager loop did not stop within 3 s"


def test_fifty_nodes_acquiring_at_once_get_distinct_subnets(opts, registry):
    registry.put_config(CFG)
    regs = [EtcdRegistry(opts) for _ in range(50)]
    barrier = threading.Barrier(50)
    results, errors = {}, []

    def run(i):
        try:
            barrier.wait()
            results[i] = SubnetManager(regs[i], CFG, node_attrs(i), ttl=60).acquire()
        except Exception as e:  # noqa: BLE001 (reported by the assertion below)
            errors.append(repr(e))
    threads = [threading.Thread(target=run, args=(i,)) for i in range(50)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        for r in regs:
            r.close()
    assert errors == []
    subnets = [lease.subnet for lease in results.values()]
    assert len(subnets) == 50 and len(set(subnets)) == 50
    stored = {lease.subnet: lease.attrs.public_ip for lease in registry.list_leases()[0]}
    assert stored == {lease.subnet: lease.attrs.public_ip for lease in results.values()}


def test_restart_gets_the_same_subnet(registry):
    first = SubnetManager(registry, CFG, node_attrs(1), ttl=60).acquire()
    SubnetManager(registry, CFG, node_attrs(2), ttl=60).acquire()
    again = SubnetManager(registry, CFG, node_attrs(1), ttl=60,
                          rng=random.Random(12345)).acquire()
    assert again.subnet == first.subnet and len(registry.list_leases()[0]) == 2
    # after a reboot whose lease is gone, subnet.env's previous subnet is taken again
    registry.delete_lease(first.subnet)
    back = SubnetManager(registry, CFG, node_attrs(1), ttl=60,
                         previous_subnet=first.subnet).acquire()
    assert back.subnet == first.subnet


def test_unrenewed_lease_expires_and_its_subnet_is_reused(registry):
    cfg = one_subnet_cfg()
    a = SubnetManager(registry, cfg, node_attrs(1), ttl=1).acquire()
    with pytest.raises(NoFreeSubnet, match="1 of 1 taken"):
        SubnetManager(registry, cfg, node_attrs(2), ttl=60).acquire()
    wait_for(lambda: registry.get_lease(a.subnet) is None, 5, "the unrenewed lease to expire")
    b = SubnetManager(registry, cfg, node_attrs(2), ttl=60).acquire()
    assert b.subnet == a.subnet and b.attrs.public_ip == node_attrs(2).public_ip


@pytest.mark.slow
def test_renewal_keeps_the_lease(registry):
    cfg = one_subnet_cfg()
    node = Node(registry, 1, cfg, ttl=2, renew_margin=1)
    lease = node.start(watch=False)
    try:
        time.sleep(3.5)  # well past the 2 s TTL
        held = registry.get_lease(lease.subnet)
        assert held is not None and held.etcd_lease_id == lease.etcd_lease_id
        with pytest.raises(NoFreeSubnet):
            SubnetManager(registry, cfg, node_attrs(2), ttl=60).acquire()
        assert node.leases.empty()  # never lost, never re-acquired
    finally:
        node.close()


def test_reservation_is_respected(registry):
    cfg = one_subnet_cfg(2)
    reserved = registry.create_lease(IPv4Network("10.244.2.0/24"),
                                      LeaseAttrs(node_attrs(1).public_ip), None)
    other = SubnetManager(registry, cfg, node_attrs(2), ttl=1).acquire()
    assert other.subnet == IPv4Network("10.244.1.0/24")
    with pytest.raises(NoFreeSubnet, match=r"2 of 2 taken \(1 reserved\)"):
        SubnetManager(registry, cfg, node_attrs(3), ttl=60).acquire()
    mine = SubnetManager(registry, cfg, node_attrs(1), ttl=1).acquire()
    assert mine.subnet == reserved.subnet and mine.reserved
    time.sleep(1.5)  # longer than the TTL: a reservation must not expire
    held = registry.get_lease(reserved.subnet)
    assert held.reserved and held.attrs.vtep_mac == node_attrs(1).vtep_mac


@pytest.mark.parametrize("how", ["key deleted", "etcd lease revoked"])
def test_lease_deleted_under_a_running_node_is_reacquired(registry, how):
    registry.put_config(CFG)
    node = Node(registry, 1, ttl=600, check_interval=3600)
    lease = node.start()
    try:
        node.remote_subnets(timeout=0.3)
        t0 = time.monotonic()
        if how == "key deleted":
            registry.delete_lease(lease.subnet)
        else:  # what `etcdctl lease revoke` does; Flannel's daemon exits 0 on this
            registry.client().revoke_lease(lease.etcd_lease_id)
        new = node.leases.get(timeout=5)
        assert time.monotonic() - t0 < 2.0  # noticed by the watch, not by a periodic check
        assert new.subnet == lease.subnet and new.etcd_lease_id != lease.etcd_lease_id
        held = registry.get_lease(lease.subnet)
        assert held.attrs.public_ip == node_attrs(1).public_ip
        assert lease.subnet not in node.remote_subnets(timeout=0.3)  # own never a remote
    finally:
        node.close()


def test_lease_taken_while_lost_moves_the_node_to_another_subnet(registry):
    node = Node(registry, 1, ttl=600, check_interval=3600)
    lease = node.start()
    try:
        # a rival takes the key in one revision (a delete and then a create raced the
        # node's own re-acquire, which comes within milliseconds of the delete)
        registry.update_lease(registry.get_lease(lease.subnet), node_attrs(9), 600)
        new = node.leases.get(timeout=5)
        assert new.subnet != lease.subnet
        assert registry.get_lease(lease.subnet).attrs.public_ip == node_attrs(9).public_ip
        wait_for(lambda: lease.subnet in node.remote_subnets(timeout=0.2), 5,
                 "the lost subnet to show up as a remote lease")
    finally:
        node.close()


@pytest.fixture
def cluster():
    c = EtcdCluster(3, prefix="ovlease").start()
    try:
        yield c
    finally:
        c.cleanup()


@pytest.mark.slow
def test_cluster_member_down_acquire_renew_watch_carry_on(cluster):
    opts = make_etcd_options(cluster.endpoints, timeout=2.0)
    reg_a, reg_b = EtcdRegistry(opts), EtcdRegistry(opts)
    a = Node(reg_a, 1, ttl=2, renew_margin=1)
    try:
        lease_a = a.start()
        a.remote_subnets(timeout=0.3)
        cluster.members[0].stop()
        b_lease = SubnetManager(reg_b, CFG, node_attrs(2), ttl=60).acquire()
        wait_for(lambda: b_lease.subnet in a.remote_subnets(timeout=0.1), 10,
                 "the watch to deliver a lease made while a member is down")
        cluster.members[1].stop()
        cluster.members[1].start(wait=False)  # another member bounces meanwhile
        time.sleep(3)  # past the 2 s TTL: renewals must have gone through the live members
        cluster.members[1].wait_healthy(timeout=15)
        held = reg_b.get_lease(lease_a.subnet)
        assert held is not None and held.attrs.public_ip == node_attrs(1).public_ip
        c_lease = SubnetManager(reg_b, CFG, node_attrs(3), ttl=60).acquire()
        wait_for(lambda: c_lease.subnet in a.remote_subnets(timeout=0.1), 10,
                 "the watch to keep going")
    finally:
        a.close()
        reg_a.close()
        reg_b.close()


def test_compaction_during_a_node_watch_loses_no_lease(etcd_server, registry, caplog):
    """A node's watch is cut off while leases change and history is compacted; once it
    reconnects, the remote leases it reports equal the store's (own lease excluded)."""
    proxy = TcpProxy(etcd_server.client_port)
    via_proxy = EtcdRegistry(make_etcd_options(proxy.endpoint, timeout=2.0))
    node = Node(via_proxy, 1, ttl=600, check_interval=3600)
    try:
        others = [SubnetManager(registry, CFG, node_attrs(i), ttl=600).acquire()
                  for i in range(2, 5)]
        own = node.start()
        assert node.remote_subnets(timeout=2) == {lease.subnet for lease in others}
        proxy.cut()
        registry.delete_lease(others[0].subnet)
        late = [SubnetManager(registry, CFG, node_attrs(i), ttl=600).acquire()
                for i in range(5, 8)]
        registry.compact()
        proxy.restore()
        expected = {lease.subnet for lease in others[1:] + late}
        wait_for(lambda: node.remote_subnets(timeout=0.1) == expected, 10,
                 "the node's remote leases to match the store after the compaction")
        assert registry.get_lease(own.subnet).attrs.public_ip == node_attrs(1).public_ip
        assert node.leases.empty()  # its own lease was never considered lost
        assert any("was compacted" in r.getMessage() for r in caplog.records)
    finally:
        node.close()
        proxy.close()
        via_proxy.close()
