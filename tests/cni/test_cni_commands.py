"""Command policy that needs no kernel state (no root): STATUS against the disk store."""

from contextlib import contextmanager
from ipaddress import IPv4Address, IPv4Network

import pytest

from overlay.cni import commands, ipam
from overlay.cni.skel import Request
from overlay.errors import CNIError


def status_request(tmp_path, **extra):
    config = {"cniVersion": "1.1.0", "name": "ovcni-cmd", "type": "overlay",
              "subnet": "10.30.1.0/29", "dataDir": str(tmp_path), **extra}
    return Request("STATUS", "1.1.0", config)


def test_status_reads_the_store_once_under_its_lock(tmp_path, monkeypatch):
    events = []
    lock, reservations = ipam.DiskStore.lock, ipam.DiskStore.reservations

    def spy_lock(self):
        events.append("lock")
        with lock(self):
            yield
        events.append("unlock")

    def spy_reservations(self):
        events.append("read")
        return reservations(self)

    monkeypatch.setattr(ipam.DiskStore, "lock", contextmanager(spy_lock))
    monkeypatch.setattr(ipam.DiskStore, "reservations", spy_reservations)
    commands.cmd_status(status_request(tmp_path))  # STATUS succeeds by not raising
    assert events == ["lock", "read", "unlock"]


def test_status_says_not_available_when_every_address_is_reserved(tmp_path, monkeypatch):
    store = ipam.DiskStore(str(tmp_path), "ovcni-cmd")
    allocator = ipam.Allocator(store, IPv4Network("10.30.1.0/29"), IPv4Address("10.30.1.1"))
    for i in range(allocator.size):
        allocator.allocate(f"c{i}", "eth0")
    # attached pods make STATUS look at the bridge; here only the IPAM verdict matters
    monkeypatch.setattr(commands, "_status_bridge", lambda conf, node, attached: None)
    with pytest.raises(CNIError) as e:
        commands.cmd_status(status_request(tmp_path))
    assert e.value.code == CNIError.NOT_AVAILABLE and "no free IP addresses" in e.value.msg


def test_status_on_an_unreadable_store_is_not_available(tmp_path):
    (tmp_path / "ovcni-cmd").write_text("not a directory")
    with pytest.raises(CNIError) as e:
        commands.cmd_status(status_request(tmp_path))
    assert e.value.code == CNIError.NOT_AVAILABLE and "cannot read IPAM store" in e.value.msg


def test_unenforced_add_says_try_again_while_policies_are_in_force(tmp_path, monkeypatch):
    """The in-process fallback knows no policy: with overlayd's marker beside subnet.env
    it creates nothing (cmd_add is never reached) and answers 11; without it, it adds."""
    added = []

    def fake_add(req):
        added.append(req)
        return {"ok": 1}

    monkeypatch.setattr(commands, "cmd_add", fake_add)
    req = Request("ADD", "1.1.0", {"cniVersion": "1.1.0", "name": "ovcni-cmd",
                                   "type": "overlay", "subnetFile": str(tmp_path / "subnet.env"),
                                   "dataDir": str(tmp_path)}, "c1", "/run/netns/x", "eth0")
    assert commands.UNENFORCED_HANDLERS["ADD"](req) == {"ok": 1}
    (tmp_path / "policy-enforced").write_text("{}\n")
    with pytest.raises(CNIError) as e:
        commands.UNENFORCED_HANDLERS["ADD"](req)
    assert e.value.code == CNIError.TRY_AGAIN and len(added) == 1


def test_an_ipv6_only_node_has_one_ipv6_range_numbered_0_and_ipv6_routes(tmp_path):
    from ipaddress import IPv6Address, IPv6Network

    from overlay.cni.netconf import parse_netconf
    conf = parse_netconf({"name": "ovcni-v6o", "type": "overlay", "isDefaultGateway": True,
                          "ipv6Subnet": "fd00:87:0:5::/64", "ipv6Network": "fd00:87::/56",
                          "dataDir": str(tmp_path)}, "1.1.0")
    node = conf.load_node_subnet()
    assert (node.subnet, node.gateway, node.network, node.gateway_interface) == (
        None, None, None, None)
    assert node.ipv6_gateway == IPv6Address("fd00:87:0:5::1")
    [only] = commands.allocators(ipam.DiskStore(str(tmp_path), "ovcni-v6o"), node)
    assert (only.subnet, only.range_id) == (IPv6Network("fd00:87:0:5::/64"), 0)
    assert [(str(d), str(g)) for d, g in commands.pod_routes(conf, node)] == [
        ("::/0", "fd00:87:0:5::1"), ("fd00:87::/56", "fd00:87:0:5::1")]
