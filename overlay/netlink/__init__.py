"""The netlink edge, one module per kernel object (as pyroute2 and the CNI plugins' pkg/ip).

``rtnl`` is the bottom: constants, attribute codec, the one errno wording
(``describe_errno``) and the socket (bulk ``execute`` for the daemon, acknowledged
``batch`` for the CNI plugin); it imports nothing of ours but the error tree.  ``netns``
enters namespaces per thread and opens sockets there.  ``link``, ``addr``, ``route`` and
``neigh`` (neighbours and FDB entries) each hold the builders of their messages, their
one parser and their one record type.  ``pod`` is the CNI plugin's operations (bridge,
veth, pod addressing) built on those; ``kernel_state`` the read-only snapshot diagnose
and trace use.  ``pyroute2_adapter`` reads the same records with pyroute2, for tests to
check the codec against an independent decoder.  No module here imports pyroute2 on
the daemon's or the CNI plugin's paths.
"""
