"""Subnet leases in etcd: the client (etcd), storage (registry) and policy (manager, reservations)."""
