"""overlay-lab: a multi-node cluster of network namespaces on one machine."""

from .cli import main

__all__ = ["main"]
