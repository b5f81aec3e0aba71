#!/usr/bin/env python3
"""Attach and detach a network namespace exactly as a container runtime would (libcni).

A minimal, dependency-free stand-in for a runtime's CNI side, used by smoke-check.sh:
it picks the network configuration list from the conf dir the way libcni does (files
``*.conflist``/``*.conf``/``*.json`` in lexical order, the first one unless a network
name is given), then for ADD executes each plugin of the list in order, found on
CNI_PATH, with the CNI_* environment and the plugin's config on stdin (``name`` and
``cniVersion`` from the list, ``prevResult`` from the previous plugin); the final
result is cached (like /var/lib/cni/results) and printed. DEL runs the plugins in
reverse order with the cached result as ``prevResult``, then drops the cache.
CHECK runs them in order with the cached result.

    cni_runtime.py add --netns /run/netns/pod --container-id c1 --cache-dir DIR
    cni_runtime.py del --netns /run/netns/pod --container-id c1 --cache-dir DIR

Exit 0 on success; on a plugin error, its CNI error JSON on stderr and exit 1.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

DEFAULT_CONF_DIR = "/etc/cni/net.d"
DEFAULT_CNI_PATH = "/opt/cni/bin:/usr/lib/cni"
PLUGIN_TIMEOUT = 60.0


class CNIRuntimeError(Exception):
    """A failure the user should read as one line."""


def load_network(conf_dir: Path, name: str | None) -> dict:
    """The network configuration list to use, as libcni's ConfFiles + LoadConfList do."""
    if not conf_dir.is_dir():
        raise CNIRuntimeError(f"CNI conf dir {conf_dir} does not exist (was install-cni run?)")
    files = sorted(p for p in conf_dir.iterdir()
                   if p.suffix in (".conflist", ".conf", ".json") and p.is_file())
    for path in files:
        try:
            conf = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise CNIRuntimeError(f"{path}: not valid JSON: {e}") from e
        if "plugins" not in conf:
            # A single-plugin .conf is a list of one.
            conf = {"cniVersion": conf.get("cniVersion"), "name": conf.get("name"),
                    "plugins": [conf]}
        if name is None or conf.get("name") == name:
            if not conf.get("plugins"):
                raise CNIRuntimeError(f"{path}: no plugins in the list")
            return conf
    wanted = f"a network named {name!r}" if name else "a network configuration"
    raise CNIRuntimeError(f"no {wanted} in {conf_dir} ({len(files)} files)")


def find_plugin(plugin_type: str, cni_path: str) -> str:
    for d in cni_path.split(":"):
        candidate = Path(d) / plugin_type
        if d and candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise CNIRuntimeError(f"CNI plugin {plugin_type!r} not found on CNI_PATH {cni_path}")


def exec_plugin(net: dict, plugin: dict, command: str, args: argparse.Namespace,
                prev_result: dict | None) -> dict | None:
    """Run one plugin of the list; returns its result (ADD) or None."""
    conf = dict(plugin)
    conf["name"] = net["name"]
    conf["cniVersion"] = net["cniVersion"]
    if prev_result is not None:
        conf["prevResult"] = prev_result
    env = dict(os.environ, CNI_COMMAND=command, CNI_CONTAINERID=args.container_id,
               CNI_NETNS=args.netns, CNI_IFNAME=args.ifname, CNI_PATH=args.cni_path,
               CNI_ARGS=f"IgnoreUnknown=1;K8S_POD_NAME={args.container_id}")
    exe = find_plugin(plugin["type"], args.cni_path)
    try:
        proc = subprocess.run([exe], input=json.dumps(conf), env=env, capture_output=True,
                              text=True, timeout=PLUGIN_TIMEOUT)
    except subprocess.TimeoutExpired as e:
        raise CNIRuntimeError(f"{plugin['type']} {command}: no answer in {PLUGIN_TIMEOUT:.0f} s") from e
    if proc.returncode != 0:
        detail = proc.stdout.strip() or proc.stderr.strip() or f"exit {proc.returncode}"
        raise CNIRuntimeError(f"{plugin['type']} {command} failed: {detail}")
    if command != "ADD":
        return None
    try:
        return json.loads(proc.stdout)
    except ValueError as e:
        raise CNIRuntimeError(f"{plugin['type']} ADD printed no result JSON: {proc.stdout!r}") from e


def cache_path(args: argparse.Namespace, net: dict) -> Path:
    return Path(args.cache_dir) / f"{net['name']}-{args.container_id}-{args.ifname}.json"


def cmd_add(net: dict, args: argparse.Namespace) -> dict:
    result = None
    try:
        for plugin in net["plugins"]:
            result = exec_plugin(net, plugin, "ADD", args, result)
    except CNIRuntimeError:
        # A runtime cleans up a failed ADD with a DEL of the whole list.
        for plugin in reversed(net["plugins"]):
            try:
                exec_plugin(net, plugin, "DEL", args, result)
            except CNIRuntimeError as e:
                print(f"warning: clean-up after the failed ADD: {e}", file=sys.stderr)
        raise
    path = cache_path(args, net)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    tmp.replace(path)
    return result


def cmd_del(net: dict, args: argparse.Namespace) -> None:
    path = cache_path(args, net)
    cached = json.loads(path.read_text()) if path.exists() else None
    for plugin in reversed(net["plugins"]):
        exec_plugin(net, plugin, "DEL", args, cached)
    path.unlink(missing_ok=True)


def cmd_check(net: dict, args: argparse.Namespace) -> None:
    path = cache_path(args, net)
    if not path.exists():
        raise CNIRuntimeError(f"no cached ADD result {path}: nothing to check")
    cached = json.loads(path.read_text())
    for plugin in net["plugins"]:
        exec_plugin(net, plugin, "CHECK", args, cached)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("command", choices=["add", "del", "check"])
    p.add_argument("--netns", required=True, help="path of the pod's network namespace")
    p.add_argument("--container-id", required=True)
    p.add_argument("--ifname", default="eth0")
    p.add_argument("--conf-dir", default=DEFAULT_CONF_DIR)
    p.add_argument("--cni-path", default=DEFAULT_CNI_PATH)
    p.add_argument("--network", help="network name (default: the first configuration)")
    p.add_argument("--cache-dir", default="/var/lib/cni/overlay-smoke")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        net = load_network(Path(args.conf_dir), args.network)
        if args.command == "add":
            print(json.dumps(cmd_add(net, args), indent=2))
        elif args.command == "del":
            cmd_del(net, args)
        else:
            cmd_check(net, args)
    except CNIRuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
