"""The shared raw rtnetlink layer: attribute codec, message walking, errno wording."""

import errno
import os
import subprocess
import sys

import pytest

from overlay.errors import NetlinkOpError
from overlay.netlink import rtnl


def test_attribute_round_trip_and_padding():
    body = (rtnl.attr_str(rtnl.IFLA_IFNAME, "br0") + rtnl.attr_u32(rtnl.IFLA_MTU, 1450)
            + rtnl.attr(rtnl.IFLA_ADDRESS, rtnl.mac_bytes("0e:00:00:00:00:01"))
            + rtnl.attr(rtnl.IFLA_LINKINFO | rtnl.NLA_F_NESTED,
                        rtnl.attr_str(rtnl.IFLA_INFO_KIND, "bridge")))
    assert len(body) % 4 == 0
    a = rtnl.attrs(body)
    assert rtnl.cstr(a[rtnl.IFLA_IFNAME]) == "br0" and rtnl.u32(a[rtnl.IFLA_MTU]) == 1450
    assert rtnl.mac_str(a[rtnl.IFLA_ADDRESS]) == "0e:00:00:00:00:01"
    assert rtnl.cstr(rtnl.attrs(a[rtnl.IFLA_LINKINFO])[rtnl.IFLA_INFO_KIND]) == "bridge"
    # A window of the buffer, as the dump parsers read it.
    assert set(rtnl.attrs(body, 8, 16)) == {rtnl.IFLA_MTU}


def test_attrs_stop_at_garbage():
    assert rtnl.attrs(rtnl.NLA.pack(2, 1) + b"\0" * 8) == {}
    assert rtnl.cstr(None) == "" and rtnl.cstr(b"") == ""


def test_walk_reads_each_message_once():
    one = rtnl.NLHDR.pack(20, rtnl.NLMSG_ERROR, 0, 7, 0) + rtnl.ERR.pack(-errno.EEXIST)
    two = rtnl.NLHDR.pack(16, rtnl.NLMSG_DONE, rtnl.NLM_F_MULTI, 8, 0)
    got = [(t, s, o, e) for t, _, s, o, e in rtnl.walk(one + two)]
    assert got == [(rtnl.NLMSG_ERROR, 7, 16, 20), (rtnl.NLMSG_DONE, 8, 36, 36)]


def test_one_errno_wording_for_every_caller():
    from overlay.netlink import kernel_state, pod

    assert rtnl.describe_errno(errno.ENODEV) == "link not found"
    assert rtnl.describe_errno(errno.EBUSY) == "device or resource busy"
    assert rtnl.describe_errno(errno.EMLINK) == os.strerror(errno.EMLINK)
    assert kernel_state.describe_errno is pod.describe_errno is rtnl.describe_errno
    assert issubclass(pod.NetlinkRequestError, NetlinkOpError)


def test_msg_is_a_plain_tuple():
    m = rtnl.Msg(rtnl.RTM_GETLINK, 0, b"", "get link lo")
    kind, flags, body, what = m
    assert (kind, m.what) == (rtnl.RTM_GETLINK, "get link lo")


def test_importing_the_low_layers_never_loads_pyroute2():
    code = ("import sys; import overlay.netlink.rtnl, overlay.netlink.netns, "
            "overlay.netlink.link, overlay.netlink.addr, overlay.netlink.route, "
            "overlay.netlink.neigh, overlay.netlink.pod, overlay.netlink.kernel_state, "
            "overlay.netlink.pyroute2_adapter, overlay.vxlan.device, overlay.daemon.daemon; "
            "sys.exit(any(m.startswith('pyroute2') for m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_socket_failures_are_netlink_errors_and_still_os_errors():
    import errno as errno_mod

    from overlay.errors import OverlayError
    from overlay.netlink.rtnl import RTM_GETLINK, NetlinkSocketError, Rtnl
    nl = Rtnl()
    nl.sock.close()  # e.g. closed by a shutdown racing a reconcile: EBADF
    with pytest.raises(NetlinkSocketError) as e:
        list(nl.dump(RTM_GETLINK, bytes(16)))
    assert isinstance(e.value, OverlayError) and isinstance(e.value, OSError)
    assert e.value.code == e.value.errno == errno_mod.EBADF
    assert str(e.value).startswith("rtnetlink send: ")


def test_a_failed_socket_set_up_closes_the_socket(monkeypatch):
    import _socket

    from overlay.netlink import rtnl
    made = []

    class Recording(_socket.socket):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            made.append(self)

    def refuse(self, groups, bulk):
        raise PermissionError(1, "bind refused")
    monkeypatch.setattr(_socket, "socket", Recording)  # the module rtnl calls
    monkeypatch.setattr(rtnl.Rtnl, "_setup", refuse)
    with pytest.raises(PermissionError):
        rtnl.Rtnl()
    assert len(made) == 1 and made[0].fileno() == -1


def test_one_missing_netns_check_for_both_netlink_openers():
    from overlay.errors import NetlinkOpError
    from overlay.netlink.netns import require_netns
    from overlay.vxlan.device import open_netlink
    for opener in (require_netns, open_netlink):
        with pytest.raises(NetlinkOpError, match="ovw-absent does not exist") as e:
            opener("ovw-absent")
        assert e.value.code == errno.ENOENT
