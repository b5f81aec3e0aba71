"""Attach and detach a network namespace through the CNI conflist, as a container runtime does.

The command-line face of :mod:`overlay.lab.runtime` (one implementation for the lab and
this), used by vagrant/smoke-check.sh inside the VMs: the network configuration list
from the conf dir as libcni picks it, its plugins executed from CNI_PATH in this
process's network namespace; the ADD result is cached (like /var/lib/cni/results) and
printed, DEL and CHECK use the cached result and DEL drops it.

    python -m overlay.lab.cni_exec add --netns /run/netns/pod --container-id c1 --cache-dir DIR
    python -m overlay.lab.cni_exec del --netns /run/netns/pod --container-id c1 --cache-dir DIR

Exit 0 on success; on an error, one line on stderr (a plugin's CNI error JSON in it) and
exit 1.  (A module of its own, not imported by the package, so that ``python -m`` runs
it once.)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence

from overlay.cni.install import DEFAULT_BIN_DIR, DEFAULT_CONF_DIR
from overlay.errors import OverlayError
from overlay.lab.runtime import Attachment, CNIRuntime, ResultCache, load_network
from overlay.lab.spec import LabError

DEFAULT_CNI_PATH = f"{DEFAULT_BIN_DIR}:/usr/lib/cni"  # then Debian's reference plugins
DEFAULT_CACHE_DIR = "/var/lib/cni/overlay-smoke"
PLUGIN_TIMEOUT = 60.0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m overlay.lab.cni_exec",
                                description=__doc__.splitlines()[0])
    p.add_argument("command", choices=["add", "del", "check"])
    p.add_argument("--netns", required=True, help="path of the pod's network namespace")
    p.add_argument("--container-id", required=True)
    p.add_argument("--ifname", default="eth0")
    p.add_argument("--conf-dir", default=DEFAULT_CONF_DIR)
    p.add_argument("--cni-path", default=DEFAULT_CNI_PATH)
    p.add_argument("--network", help="network name (default: the first configuration)")
    p.add_argument("--cache-dir", default=DEFAULT_CACHE_DIR)
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> dict | None:
    """The command; returns the ADD result (None for DEL and CHECK)."""
    runtime = CNIRuntime(load_network(args.conf_dir, args.network), args.cni_path.split(":"),
                         None, timeout=PLUGIN_TIMEOUT, extra_env=os.environ)
    att = Attachment(args.container_id, args.netns, args.ifname,
                     f"IgnoreUnknown=1;K8S_POD_NAME={args.container_id}")
    cache = ResultCache(args.cache_dir)
    net = runtime.network
    cache.path(net, att)  # a container ID or name unfit for a file name fails before ADD
    if args.command == "add":
        result = runtime.add(att)
        cache.save(net, att, result)
        return result
    cached = cache.load(net, att)
    if args.command == "del":
        runtime.delete(att, cached)
        cache.drop(net, att)
    elif cached is None:
        raise LabError(f"no cached ADD result {cache.path(net, att)}: nothing to check")
    else:
        runtime.check(att, cached)
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s",
                        stream=sys.stderr)
    try:
        result = run(args)
    except (OverlayError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if result is not None:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
