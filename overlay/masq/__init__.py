"""Masquerade: the node's nftables table (``--ip-masq``) and the plugin's per-pod chains."""
