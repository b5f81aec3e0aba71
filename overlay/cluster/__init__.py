"""The cluster as objects in etcd beside the subnet leases: node status and heartbeats,
the pod registry, the schema version (and, later, namespaces and policies).

``keys`` is the one place that knows the key layout and the names' rule; ``store`` is the
generic JSON-object access on top of the subnet registry's etcd client and watch.
"""
