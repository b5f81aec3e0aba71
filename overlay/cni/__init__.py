"""The CNI plugin (CNI ``type`` ``overlay``): attach pods to the node bridge.

Layers, bottom up:

- ``skel``: environment + stdin parsing and validation, version checks, and the one
  place where an error becomes CNI error JSON.
- ``types``: the ADD result, rendered per cniVersion.
- ``netconf``: the plugin's network configuration, merged with subnet.env.
- ``ipam``: host-local-compatible IP reservations (disk store + in-memory fake).
- ``masq``: optional per-attachment masquerade rules (``ipMasq``).
- ``commands``: ADD, DEL, CHECK, STATUS, GC (policy; kernel state via
  ``overlay.netlink.pod``).
- ``plugin``: the ``overlay-cni`` entry point (in-process, and ``serve``).
- ``server``: the warm per-node process answering the executable entry on a unix socket.
- ``client``: the executable entry's body (``cni-plugin/overlay``; built-ins only).
- ``install``: install-cni (executable + conflist, atomically).

The plugin's only contract with the daemon is subnet.env (and the optional socket).
Everything on the plugin's path uses only the standard library.
"""
