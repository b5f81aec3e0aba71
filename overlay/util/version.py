"""The one ``--version`` line every tool prints: ``<program> <package version>``."""

from __future__ import annotations

from importlib import metadata

PACKAGE = "overlay"


def package_version() -> str | None:
    """The installed package's version (from its metadata, so it is the version pip
    installed, not a copy that can drift); None when it is not installed."""
    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        return None


def version_line(prog: str) -> str:
    """``overlayctl 0.1.0``: the program and the installed package's version."""
    version = package_version()
    if version is None:
        return f"{prog} unknown (the {PACKAGE} package is not installed)"
    return f"{prog} {version}"
