"""The netlink edge: the only package that imports pyroute2 (and only lazily).

``rtnl`` is the raw rtnetlink layer everything else builds on: constants, attribute
codec, the one errno wording (``describe_errno``) and the socket (bulk ``execute`` for
the daemon, acknowledged ``batch`` for the CNI plugin).  ``rawnl`` holds the daemon's
messages and dump parsers, ``vxlan`` programs the VXLAN device and remote entries with
them; ``pod`` the bridge, veth and pod-side addresses and routes (CNI plugin);
``inspect`` reads kernel state for diagnose; ``common`` the namespace paths and the
pyroute2 helpers (``open_iproute``, ``translated``).
"""
