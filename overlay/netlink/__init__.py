"""The netlink edge, one module per kernel object (as pyroute2 and the CNI plugins' pkg/ip).

``rtnl`` is the bottom: constants, attribute codec, the one errno wording
(``describe_errno``) and the socket (bulk ``execute`` for the daemon, acknowledged
``batch`` for the CNI plugin); it imports nothing of ours but the error tree.  ``netns``
enters namespaces per thread and opens sockets there.  ``link``, ``addr``, ``route`` and
``neigh`` (neighbours and FDB entries) each hold the builders of their messages, their
one parser and their one record type.  ``pod`` is the CNI plugin's operations (bridge,
veth, pod addressing) built on those; ``kernel_state`` the read-only snapshot diagnose
and trace use, read by pyroute2 through ``pyroute2_adapter`` (the one place that turns
pyroute2's messages into these records).  Nothing on the daemon's or the CNI plugin's
paths imports pyroute2: the README's Netlink section has the measurements behind each
choice.
"""
