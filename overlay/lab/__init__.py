"""overlay-lab: a multi-node cluster of network namespaces on one machine."""

from overlay.lab.cli import main

__all__ = ["main"]
