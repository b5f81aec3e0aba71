"""Subnet leases in etcd: client (etcd), storage (registry), policy (manager, reservations)."""
