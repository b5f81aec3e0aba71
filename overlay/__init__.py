"""A Flannel-like VXLAN pod network for Kubernetes-style clusters."""

__version__ = "0.1.0"
