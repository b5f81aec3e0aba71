"""Calling CNI plugins exactly as a container runtime does (CNI SPEC, "Execution").

For a network configuration list, ADD calls each plugin in order, handing each the
previous plugin's result as ``prevResult``; DEL calls them in reverse order with the
cached result of the ADD; CHECK in order with that cached result.  Plugins are found by
their ``type`` in the ``CNI_PATH`` directories and run inside the node's namespace, as
a runtime on that node would run them.  No capability arguments are passed (the lab's
pods map no ports), so a chained ``portmap`` just passes the result through.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from dataclasses import dataclass
from typing import Any

from .spec import LabError
from .system import NETNS_DIR, in_netns

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Attachment:
    container_id: str
    netns: str          # a name under /var/run/netns
    ifname: str = "eth0"
    args: str = ""      # CNI_ARGS


def load_conflist(path: str) -> dict[str, Any]:
    try:
        with open(path) as f:
            conf = json.load(f)
    except (OSError, ValueError) as e:
        raise LabError(f"cannot read the CNI network configuration {path}: {e}") from e
    if "plugins" not in conf:  # a single-plugin .conf is a list of one
        conf = {"cniVersion": conf.get("cniVersion"), "name": conf.get("name"), "plugins": [conf]}
    if not conf.get("name") or not conf.get("plugins"):
        raise LabError(f"{path}: a CNI configuration list needs a name and plugins")
    return conf


def find_conflist(conf_dir: str) -> str:
    """The file a runtime would pick: the lexically first .conflist/.conf/.json."""
    try:
        names = sorted(n for n in os.listdir(conf_dir)
                       if n.endswith((".conflist", ".conf", ".json")))
    except FileNotFoundError:
        names = []
    if not names:
        raise LabError(f"no CNI network configuration in {conf_dir}")
    return os.path.join(conf_dir, names[0])


class CNIRuntime:
    """Runs a conflist's plugins in ``node_ns`` with ``CNI_PATH=cni_path``."""

    def __init__(self, conflist: dict[str, Any], cni_path: list[str], node_ns: str,
                 timeout: float = 30.0, extra_env: dict[str, str] | None = None):
        self.extra_env = dict(extra_env or {})
        self.conflist = conflist
        self.cni_path = cni_path
        self.node_ns = node_ns
        self.timeout = timeout

    def add(self, att: Attachment) -> dict[str, Any]:
        result: dict[str, Any] | None = None
        done: list[dict[str, Any]] = []
        for plugin in self.conflist["plugins"]:
            try:
                result = self._exec("ADD", plugin, att, result)
            except LabError:
                # A runtime cleans up a failed ADD with DEL over the plugins already called.
                for p in reversed(done + [plugin]):
                    self._del_quietly(p, att, result)
                raise
            done.append(plugin)
        assert result is not None
        return result

    def delete(self, att: Attachment, cached: dict[str, Any] | None) -> None:
        for plugin in reversed(self.conflist["plugins"]):
            self._exec("DEL", plugin, att, cached)

    def check(self, att: Attachment, cached: dict[str, Any]) -> None:
        for plugin in self.conflist["plugins"]:
            self._exec("CHECK", plugin, att, cached)

    def _del_quietly(self, plugin: dict[str, Any], att: Attachment,
                     prev: dict[str, Any] | None) -> None:
        try:
            self._exec("DEL", plugin, att, prev)
        except LabError as e:
            log.warning("cleanup after a failed ADD: %s", e)

    def _exec(self, command: str, plugin: dict[str, Any], att: Attachment,
              prev: dict[str, Any] | None) -> dict[str, Any] | None:
        conf = dict(plugin)
        conf["cniVersion"] = self.conflist.get("cniVersion", plugin.get("cniVersion"))
        conf["name"] = self.conflist["name"]
        if prev is not None:
            conf["prevResult"] = prev
        exe = self._find(plugin.get("type", ""))
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": att.container_id,
            "CNI_NETNS": os.path.join(NETNS_DIR, att.netns),
            "CNI_IFNAME": att.ifname,
            "CNI_PATH": os.pathsep.join(self.cni_path),
        }
        if att.args:
            env["CNI_ARGS"] = att.args
        env.update(self.extra_env)
        log.debug("CNI %s %s for %s", command, plugin.get("type"), att.container_id)
        try:
            cp = subprocess.run(in_netns(self.node_ns, [exe]), input=json.dumps(conf),
                                capture_output=True, text=True, env=env, timeout=self.timeout)
        except subprocess.TimeoutExpired as e:
            raise LabError(f"CNI {command} {plugin['type']} for {att.container_id}: "
                           f"no answer within {self.timeout:g} s") from e
        if cp.returncode != 0:
            raise LabError(f"CNI {command} {plugin['type']} for {att.container_id} failed: "
                           f"{_error_text(cp)}")
        if command != "ADD":
            return prev
        try:
            return json.loads(cp.stdout)
        except ValueError as e:
            raise LabError(f"CNI ADD {plugin['type']}: result is not JSON: {cp.stdout[:200]!r}") from e

    def _find(self, type_: str) -> str:
        if not type_ or "/" in type_:
            raise LabError(f"CNI plugin type {type_!r} is not a plugin name")
        for d in self.cni_path:
            path = os.path.join(d, type_)
            if os.access(path, os.X_OK):
                return path
        raise LabError(f"CNI plugin {type_!r} not found in {os.pathsep.join(self.cni_path)}")


def _error_text(cp: subprocess.CompletedProcess) -> str:
    try:
        err = json.loads(cp.stdout)
        text = f"code {err.get('code')}: {err.get('msg')}"
        if err.get("details"):
            text += f" ({err['details']})"
        return text
    except ValueError:
        lines = (cp.stderr or cp.stdout or f"exit {cp.returncode}").strip().splitlines()
        return lines[-1] if lines else f"exit {cp.returncode}"


def result_ip(result: dict[str, Any]) -> str:
    """The pod's address from a CNI result (0.3.0 and later all carry ``ips``)."""
    for entry in result.get("ips", []):
        addr = entry.get("address", "")
        if addr:
            return addr.split("/")[0]
    raise LabError(f"the CNI result has no IP address: {json.dumps(result)[:200]}")
