"""Which network configuration a container runtime reads from a CNI conf dir, as libcni
reads it (``libcni/conf.go``).  Standard library only; used by the lab's runtime and by
``overlayctl diagnose``.

- The files are the regular files named ``*.conf``, ``*.conflist`` or ``*.json`` in the
  directory (not below it), in lexical order.  With no network named, a runtime takes
  the first one (cri-o's ocicni, containerd's go-cni).
- The extension says what a file holds: ``.conflist`` a list (``name`` and a non-empty
  ``plugins``, each plugin an object with a ``type``); ``.conf`` and ``.json`` one
  plugin's configuration (with a ``type``), which a runtime runs as a list of one.
- A network asked for by name is the first ``.conflist`` with that name, else the first
  ``.conf``/``.json`` with it (``LoadConfList``); a file that does not load on the way
  stops the search, as in libcni.

A loaded list is a dict: the ``.conflist``'s object, or ``{"cniVersion", "name",
"plugins": [the conf]}`` for a single configuration.
"""

from __future__ import annotations

import os
from typing import Any

from overlay.errors import ConfigError
from overlay.util import jsontext

CONF_EXTENSIONS = (".conf", ".conflist", ".json")
LIST_EXTENSION = ".conflist"
SINGLE_EXTENSIONS = (".conf", ".json")


class ConfListError(ConfigError):
    """A conf dir or configuration file a runtime would not load."""


def conf_files(conf_dir: str, extensions: tuple[str, ...] = CONF_EXTENSIONS) -> list[str]:
    """The configuration files in ``conf_dir`` with one of ``extensions``, in lexical order."""
    try:
        names = os.listdir(conf_dir)
    except FileNotFoundError:
        raise ConfListError(f"CNI conf dir {conf_dir} does not exist "
                            "(was install-cni run?)") from None
    except OSError as e:
        raise ConfListError(f"cannot list the CNI conf dir {conf_dir}: {e.strerror}") from e
    return sorted(os.path.join(conf_dir, n) for n in names
                  if os.path.splitext(n)[1] in extensions
                  and os.path.isfile(os.path.join(conf_dir, n)))


def parse_conflist(obj: Any, path: str) -> dict[str, Any]:
    """The list a file's JSON value stands for; ``path``'s extension says which kind."""
    if not isinstance(obj, dict):
        raise ConfListError(f"{path}: a CNI network configuration is a JSON object")
    if not path.endswith(LIST_EXTENSION):
        _check_plugin(obj, path)
        obj = {"cniVersion": obj.get("cniVersion"), "name": obj.get("name"), "plugins": [obj]}
    elif "plugins" not in obj:
        raise ConfListError(f"{path}: a .conflist needs a \"plugins\" list "
                            "(a single plugin's configuration is a .conf)")
    name, plugins = obj.get("name"), obj["plugins"]
    if not isinstance(name, str) or not name:
        raise ConfListError(f"{path}: a CNI network configuration needs a \"name\"")
    if not isinstance(plugins, list) or not plugins:
        raise ConfListError(f"{path}: \"plugins\" must be a non-empty list")
    for plugin in plugins:
        _check_plugin(plugin, path)
    return obj


def _check_plugin(plugin: Any, path: str) -> None:
    if not isinstance(plugin, dict):
        raise ConfListError(f"{path}: each plugin's configuration is a JSON object")
    if not isinstance(plugin.get("type"), str) or not plugin["type"]:
        raise ConfListError(f"{path}: a plugin's configuration needs a \"type\""
                            + ("" if path.endswith(LIST_EXTENSION) else
                               " (a list of plugins is a .conflist)"))


def load_conflist(path: str) -> dict[str, Any]:
    """One file, read and checked."""
    try:
        with open(path, encoding="utf-8") as f:
            obj = jsontext.loads(f.read())
    except (OSError, ValueError) as e:
        raise ConfListError(f"cannot read the CNI network configuration {path}: {e}") from e
    return parse_conflist(obj, path)


def find_conflist(conf_dir: str) -> str:
    """The file a runtime reads when no network is named: the lexically first."""
    files = conf_files(conf_dir)
    if not files:
        raise ConfListError(f"no CNI network configuration in {conf_dir}")
    return files[0]


def load_network(conf_dir: str, name: str | None = None) -> dict[str, Any]:
    """The list a runtime loads: the first file's, or the one named ``name``."""
    if name is None:
        return load_conflist(find_conflist(conf_dir))
    files = conf_files(conf_dir)
    lists = [f for f in files if f.endswith(LIST_EXTENSION)]
    singles = [f for f in files if not f.endswith(LIST_EXTENSION)]
    for path in lists + singles:
        conf = load_conflist(path)
        if conf["name"] == name:
            return conf
    raise ConfListError(f"no network named {name!r} in {conf_dir} ({len(files)} files)")
