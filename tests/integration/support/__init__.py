"""What the integration tests share: a real etcd, overlayd nodes, CNI nodes, the lab."""
