"""install-cni: put the plugin's executable entry and conflist where the runtime looks.

Like Flannel's install-cni: ``<bin dir>/overlay`` (the tiny entry, its first line naming
the Python that runs overlay) and ``<conf dir>/10-overlay.conflist`` (overlay chained
with the reference ``portmap`` plugin).  Each file is written atomically (temp file +
rename, so a runtime never reads half a file) and only when its content differs.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import sys
from dataclasses import dataclass
from typing import Any

from overlay.cni.netconf import DEFAULT_BRIDGE, DEFAULT_DATA_DIR
from overlay.errors import ConfigError
from overlay.subnetenv import DEFAULT_SUBNET_FILE
from overlay.util.fsutil import atomic_write
from overlay.util.ifname import ifname_problem

log = logging.getLogger(__name__)

DEFAULT_BIN_DIR = "/opt/cni/bin"
DEFAULT_CONF_DIR = "/etc/cni/net.d"
PLUGIN_NAME = "overlay"
# Where the reference plugins usually are: the upstream tarball's directory, then Debian's
# containernetworking-plugins package (which installs into /usr/lib/cni, not /opt/cni/bin).
PORTMAP_DIRS = ("/opt/cni/bin", "/usr/lib/cni")
CONFLIST_NAME = "10-overlay.conflist"

# cniVersion 1.0.0, not 1.1.0: Debian's portmap (containernetworking-plugins 1.1.1) and
# podman 4.3's libcni stop at 1.0.0, and a runtime drops a list it cannot run whole.
# The overlay entry's per-node keys (bridge, subnetFile, dataDir) come from PluginSettings.
DEFAULT_CONFLIST: dict[str, Any] = {
    "cniVersion": "1.0.0",
    "name": "overlay",
    "plugins": [
        {"type": PLUGIN_NAME, "hairpinMode": True, "isDefaultGateway": True},
        {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True},
    ],
}

ENTRY_TEMPLATE = '''#!{python} -IS
# The overlay CNI plugin's executable entry (CNI "type": "overlay").
#
# Deliberately tiny: under `python -IS` it imports only overlay.cni.client (interpreter
# built-ins only, cached bytecode), which hands the request to the warm server
# (`overlay-cni serve`, or overlayd --cni-socket) on /run/overlay/cni.sock and falls back
# to running the plugin in-process when no server answers.
# `overlayctl install-cni` rewrites the first line to the Python that runs overlay and
# ROOT to the directory holding the overlay package.
import sys

ROOT = {root}
root = ROOT or __file__.rpartition("/")[0].rpartition("/")[0] or "."
sys.path.insert(0, root)
from overlay.cni.client import main  # noqa: E402

main()  # ends the process itself
'''


@dataclass(frozen=True)
class InstallResult:
    plugin_path: str
    conflist_path: str
    plugin_changed: bool
    conflist_changed: bool
    portmap_found: bool
    portmap_elsewhere: str | None = None  # a directory other than bin_dir that has portmap


def find_portmap(bin_dir: str, dirs: tuple[str, ...] = PORTMAP_DIRS) -> str | None:
    """The first of ``dirs`` (other than ``bin_dir``) holding an executable portmap."""
    here = os.path.realpath(bin_dir)
    for directory in dirs:
        if os.path.realpath(directory) != here and \
                os.access(os.path.join(directory, "portmap"), os.X_OK):
            return directory
    return None


def portmap_warning(result: InstallResult, bin_dir: str,
                    dirs: tuple[str, ...] = PORTMAP_DIRS) -> str | None:
    """What to tell the user when the conflist's second plugin is not in ``bin_dir``.

    A runtime drops a conflist whose plugin it cannot find on its plugin path, so the fix
    is either to point the runtime at where portmap already is, or to install it."""
    if result.portmap_found:
        return None
    head = (f"warning: {bin_dir}/portmap is missing: {CONFLIST_NAME} chains the reference "
            "portmap plugin and a runtime ignores a conflist whose plugin it cannot find")
    if result.portmap_elsewhere:
        where = result.portmap_elsewhere
        return (f"{head}; portmap is installed in {where}: add {where} to the runtime's CNI "
                f"plugin path (CNI_PATH={bin_dir}:{where}; podman: cni_plugin_dirs in "
                "containers.conf; containerd: the CRI plugin's cni bin_dir) or link it: "
                f"ln -s {where}/portmap {bin_dir}/portmap")
    searched = ", ".join(dict.fromkeys((bin_dir, *dirs)))
    return (f"{head}; not found in {searched}: install the reference plugins "
            "(Debian/Ubuntu: apt install containernetworking-plugins, into /usr/lib/cni) "
            f"and point the runtime at them, or copy portmap into {bin_dir}")


def package_root() -> str:
    """The directory that holds the ``overlay`` package (what the entry puts on sys.path)."""
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def render_entry(python: str | None = None, root: str | None = None) -> str:
    return ENTRY_TEMPLATE.format(python=python or sys.executable,
                                 root=repr(root) if root else "None")


@dataclass(frozen=True)
class PluginSettings:
    """The per-node keys of the overlay plugin's entry in the conflist."""

    bridge: str = DEFAULT_BRIDGE
    subnet_file: str = DEFAULT_SUBNET_FILE
    data_dir: str = DEFAULT_DATA_DIR

    def validate(self) -> None:
        problem = ifname_problem(self.bridge)
        if problem:
            raise ConfigError(f"--bridge {self.bridge!r}: not a valid interface name "
                              f"(it {problem})")
        for flag, path in (("--subnet-file", self.subnet_file), ("--data-dir", self.data_dir)):
            if not os.path.isabs(path):
                raise ConfigError(f"{flag} {path!r}: must be an absolute path")


def render_conflist(settings: PluginSettings = PluginSettings()) -> str:
    conf = copy.deepcopy(DEFAULT_CONFLIST)
    overlay = conf["plugins"][0]
    conf["plugins"][0] = {"type": overlay.pop("type"), "bridge": settings.bridge,
                          "subnetFile": settings.subnet_file, "dataDir": settings.data_dir,
                          **overlay}
    return json.dumps(conf, indent=2) + "\n"


def _write_if_changed(path: str, content: str, mode: int) -> bool:
    try:
        with open(path, encoding="utf-8") as f:
            same = f.read() == content
        if same and (os.stat(path).st_mode & 0o777) == mode:
            return False
    except (FileNotFoundError, UnicodeDecodeError):
        pass
    atomic_write(path, content, mode=mode)
    return True


def install_cni(bin_dir: str = DEFAULT_BIN_DIR, conf_dir: str = DEFAULT_CONF_DIR,
                python: str | None = None,
                settings: PluginSettings = PluginSettings(),
                portmap_dirs: tuple[str, ...] = PORTMAP_DIRS) -> InstallResult:
    settings.validate()
    for what, directory in (("bin dir", bin_dir), ("conf dir", conf_dir)):
        if os.path.exists(directory) and not os.path.isdir(directory):
            raise ConfigError(f"{what} {directory} exists and is not a directory")
    plugin_path = os.path.join(bin_dir, PLUGIN_NAME)
    conflist_path = os.path.join(conf_dir, CONFLIST_NAME)
    try:
        plugin_changed = _write_if_changed(plugin_path, render_entry(python, package_root()),
                                           0o755)
        conflist_changed = _write_if_changed(conflist_path, render_conflist(settings),
                                              0o644)
    except OSError as e:
        raise ConfigError(f"cannot install the CNI plugin: {e.strerror}: {e.filename}") from e
    found = os.access(os.path.join(bin_dir, "portmap"), os.X_OK)
    result = InstallResult(plugin_path, conflist_path, plugin_changed, conflist_changed,
                           found, None if found else find_portmap(bin_dir, portmap_dirs))
    log.info("install-cni: %s %s, %s %s", plugin_path,
             "written" if plugin_changed else "unchanged", conflist_path,
             "written" if conflist_changed else "unchanged")
    return result
