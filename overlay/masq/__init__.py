"""Masquerade: the node's nftables table (``--ip-masq``) and the CNI plugin's per-pod iptables chains."""
