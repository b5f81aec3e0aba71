"""The one ``--version`` line every tool prints: ``<program> <package version>``."""

from __future__ import annotations

from importlib import metadata

PACKAGE = "overlay"


def version_line(prog: str) -> str:
    """``overlayctl 0.1.0``: the installed package's version (from its metadata, so it is
    the version pip installed, not a copy that can drift)."""
    try:
        return f"{prog} {metadata.version(PACKAGE)}"
    except metadata.PackageNotFoundError:
        return f"{prog} unknown (the {PACKAGE} package is not installed)"


def package_version() -> str:
    """The installed package's version alone (``unknown`` when not installed), for the
    records a program writes about itself."""
    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        return "unknown"
