"""Calling CNI plugins exactly as a container runtime does (CNI SPEC, "Execution").

The network configuration list is picked as libcni picks it (``overlay.cni.conflist``):
the files ``*.conf``, ``*.conflist`` and ``*.json`` of the conf dir in lexical order, the
first one unless a network name is asked for (a single-plugin ``.conf`` is a list of
one).  ADD calls each plugin in order, handing each the previous plugin's result as
``prevResult``; DEL calls them in reverse order with the cached result of the ADD; CHECK
in order with that cached result.  Plugins are found by their ``type`` in the
``CNI_PATH`` directories and run in the node's namespace (or this process's own), as a
runtime on that node would run them.  A plugin's error is reported with its CNI error
JSON.  No capability arguments are passed (the pods map no ports), so a chained
``portmap`` just passes the result through.

Two users: the namespace lab (``lab.py``, which keeps the results in its state file)
and ``python -m overlay.lab.cni_exec`` (the smoke check in the Vagrant VMs, which keeps
them in a :class:`ResultCache`).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

from overlay.cni import conflist
from overlay.cni.skel import validate_container_id, validate_ifname, validate_network_name
from overlay.errors import CNIError
from overlay.lab.spec import LabError
from overlay.lab.system import NETNS_DIR, in_netns
from overlay.util.fsutil import atomic_write

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Attachment:
    container_id: str
    netns: str          # a name under /var/run/netns, or a path
    ifname: str = "eth0"
    args: str = ""      # CNI_ARGS
    # The pod's labels, passed as the netconf's ``args.cni.labels`` (CNI conventions).
    labels: tuple[tuple[str, str], ...] = ()


def find_conflist(conf_dir: str) -> str:
    """The file a runtime reads when no network is named (:mod:`overlay.cni.conflist`)."""
    with _lab_error():
        return conflist.find_conflist(conf_dir)


def load_conflist(path: str) -> dict[str, Any]:
    with _lab_error():
        return conflist.load_conflist(path)


def load_network(conf_dir: str, name: str | None = None) -> dict[str, Any]:
    """The list libcni would load: the first file's, or the one named ``name``."""
    with _lab_error():
        return conflist.load_network(conf_dir, name)


@contextmanager
def _lab_error() -> Iterator[None]:
    try:
        yield
    except conflist.ConfListError as e:
        raise LabError(str(e)) from e


class ResultCache:
    """The ADD results a runtime keeps for DEL and CHECK (libcni's /var/lib/cni/results):
    one file per network, container and interface."""

    def __init__(self, directory: str):
        self.directory = directory

    def path(self, network: str, att: Attachment) -> str:
        """The file for this attachment; its parts are checked as a plugin checks them,
        so that no container ID or name (``../x``) points outside the directory."""
        try:
            validate_network_name(network)
            validate_container_id(att.container_id)
            validate_ifname(att.ifname)
        except CNIError as e:
            raise LabError(f"no file name for the CNI result: {e.msg} ({e.details})") from e
        return os.path.join(self.directory, f"{network}-{att.container_id}-{att.ifname}.json")

    def load(self, network: str, att: Attachment) -> dict[str, Any] | None:
        path = self.path(network, att)
        try:
            with open(path) as f:
                return json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise LabError(f"cached CNI result {path} is unreadable ({e}): remove it") from e

    def save(self, network: str, att: Attachment, result: dict[str, Any]) -> None:
        atomic_write(self.path(network, att), json.dumps(result))

    def drop(self, network: str, att: Attachment) -> None:
        with suppress(FileNotFoundError):
            os.unlink(self.path(network, att))


class CNIRuntime:
    """Runs a conflist's plugins with ``CNI_PATH=cni_path``, inside ``node_ns`` if given.

    The plugins' environment is ``PATH``, then ``extra_env`` (a runtime's own environment,
    or settings such as a plugin's socket), then the ``CNI_*`` variables."""

    def __init__(self, conflist: dict[str, Any], cni_path: list[str], node_ns: str | None,
                 timeout: float = 30.0, extra_env: Mapping[str, str] | None = None):
        self.extra_env = dict(extra_env or {})
        self.conflist = conflist
        self.cni_path = cni_path
        self.node_ns = node_ns
        self.timeout = timeout

    @property
    def network(self) -> str:
        return self.conflist["name"]

    def add(self, att: Attachment) -> dict[str, Any]:
        result: dict[str, Any] | None = None
        try:
            for plugin in self.conflist["plugins"]:
                result = self._exec("ADD", plugin, att, result)
        except LabError:
            # A runtime cleans up a failed ADD with a DEL of the whole list.
            for plugin in reversed(self.conflist["plugins"]):
                self._del_quietly(plugin, att, result)
            raise
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
            log.warning("clean-up after the failed ADD: %s", e)

    def _exec(self, command: str, plugin: dict[str, Any], att: Attachment,
              prev: dict[str, Any] | None) -> dict[str, Any] | None:
        conf = dict(plugin)
        conf["cniVersion"] = self.conflist.get("cniVersion", plugin.get("cniVersion"))
        conf["name"] = self.conflist["name"]
        if prev is not None:
            conf["prevResult"] = prev
        if att.labels:
            conf["args"] = {"cni": {"labels": [{"key": k, "value": v} for k, v in att.labels]}}
        exe = self._find(plugin.get("type", ""))
        what = f"CNI {command} {plugin['type']} for {att.container_id}"
        log.debug("%s", what)
        argv = in_netns(self.node_ns, [exe]) if self.node_ns else [exe]
        try:
            cp = subprocess.run(argv, input=json.dumps(conf), capture_output=True, text=True,
                                env=self._env(command, att), timeout=self.timeout)
        except subprocess.TimeoutExpired as e:
            raise LabError(f"{what}: no answer within {self.timeout:g} s") from e
        except OSError as e:
            raise LabError(f"{what}: cannot run {argv[0]}: {e}") from e
        if cp.returncode != 0:
            raise LabError(f"{what} failed: {_error_text(cp)}")
        if command != "ADD":
            return prev
        try:
            return json.loads(cp.stdout)
        except ValueError as e:
            raise LabError(f"{what}: the result is not JSON: {cp.stdout[:200]!r}") from e

    def _env(self, command: str, att: Attachment) -> dict[str, str]:
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")}
        # A runtime's own CNI_* settings never reach a plugin: it gets this call's.
        env.update((k, v) for k, v in self.extra_env.items() if not k.startswith("CNI_"))
        env.update(CNI_COMMAND=command, CNI_CONTAINERID=att.container_id,
                   CNI_NETNS=os.path.join(NETNS_DIR, att.netns), CNI_IFNAME=att.ifname,
                   CNI_PATH=os.pathsep.join(self.cni_path))
        if att.args:
            env["CNI_ARGS"] = att.args
        return env

    def _find(self, type_: str) -> str:
        if not type_ or "/" in type_:
            raise LabError(f"CNI plugin type {type_!r} is not a plugin name")
        for d in self.cni_path:
            path = os.path.join(d, type_)
            if d and os.path.isfile(path) and os.access(path, os.X_OK):
                return path
        raise LabError(f"CNI plugin {type_!r} not found on CNI_PATH "
                       f"{os.pathsep.join(self.cni_path)}")


def _error_text(cp: subprocess.CompletedProcess) -> str:
    """The plugin's CNI error JSON (on one line), else the last line it printed."""
    try:
        return json.dumps(json.loads(cp.stdout))
    except ValueError:
        lines = (cp.stderr or cp.stdout or f"exit {cp.returncode}").strip().splitlines()
        return lines[-1] if lines else f"exit {cp.returncode}"


def result_ip(result: dict[str, Any]) -> str:
    """The pod's first address from a CNI result (0.3.0 and later all carry ``ips``)."""
    for entry in result.get("ips", []):
        addr = entry.get("address", "")
        if addr:
            return addr.split("/")[0]
    raise LabError(f"the CNI result has no IP address: {json.dumps(result)[:200]}")


def result_ips(result: dict[str, Any]) -> tuple[str, str | None]:
    """(the first address, the first IPv6 address or None) of a CNI result: a dual-stack
    pod's IPv4 and IPv6, an IPv6-only pod's IPv6 twice."""
    first = result_ip(result)
    v6 = [e["address"].split("/")[0] for e in result.get("ips", [])
          if ":" in str(e.get("address", ""))]
    return first, (v6[0] if v6 else None)
