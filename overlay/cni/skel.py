"""The CNI skeleton: parse and validate env + stdin, check versions, dispatch.

Everything a runtime can get wrong is rejected here, before a command touches a path,
a file or the kernel.  An error becomes CNI error JSON in exactly one place:
:func:`run`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from overlay.errors import CNIError, IPAMError, NetlinkOpError, OverlayError
from overlay.util import jsontext, lazylog
from overlay.util.containerid import CONTAINER_ID_RE, container_id_problem
from overlay.util.ifname import ifname_problem

log = lazylog.get_logger(__name__)

SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
LATEST_VERSION = "1.1.0"
COMMANDS = ("ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC")

# Plugin-specific error codes (the SPEC leaves 100+ to plugins); the SPEC's own are on
# CNIError.  Every code the plugin answers with is defined here or there.
ERR_KERNEL = 100      # a netlink operation failed
ERR_IPAM = 101        # no free address, duplicate allocation, requested IP taken
ERR_FIREWALL = 102    # iptables failed
ERR_CHECK = 103       # CHECK found the attachment different from prevResult
ERR_INTERNAL = 999    # a bug: same code as libcni's ErrInternal

# Whole-string rules (used with fullmatch): ``re.match("...$")`` also accepts a trailing
# newline, and "c1\n" then named other files and veths than "c1" (two pods, one IP).
_NAME_RE = CONTAINER_ID_RE  # network names follow the container ID's characters
_ARG_RE = re.compile(r"[A-Za-z0-9_\-]+")
# A network's name is its IPAM store's directory name (host-local's layout), so one file
# name at most: a longer one failed the ADD with "File name too long" (code 101).
MAX_NETWORK_NAME = 255

# Bounds on one request, the same for the in-process plugin and the warm server (which
# checks them on the request header, before reading the body).  Real configs, even with
# a prevResult, are a few KiB; Linux caps one env string at 128 KiB.
MAX_STDIN = 4 << 20
MAX_ENV = 1 << 20

# Which environment variables each command needs (SPEC section 2), in the reference skel's
# order so the "missing" list reads the same; like it, ADD/CHECK/DEL need CNI_PATH (where a
# plugin finds its delegates), STATUS/GC/VERSION do not.
_REQUIRED_ENV = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"),
    "STATUS": (),
    "GC": (),
    "VERSION": (),
}
_MIN_VERSION = {"CHECK": "0.4.0", "STATUS": "1.1.0", "GC": "1.1.0"}


class Request(NamedTuple):
    """One validated plugin invocation (a NamedTuple, as every record on the plugin's
    path: ``dataclasses`` and its imports cost the in-process plugin ~15 ms a call)."""

    command: str
    cni_version: str
    config: dict[str, Any]
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    args: Mapping[str, str] = {}  # never mutated: parse_cni_args builds a fresh dict
    path: str = ""
    netns_fd: int | None = None  # handed over by the executable entry, if it opened CNI_NETNS
    host_netns_fd: int | None = None  # the caller's netns (the "host" side), for the warm server
    reaper: Any = None  # the warm server's background link deleter (see server.LinkReaper)


Handler = Callable[[Request], dict[str, Any] | None]


def version_tuple(version: str) -> tuple[int, int, int]:
    parts = version.split(".")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise CNIError(CNIError.DECODE_FAILURE, f"malformed cniVersion {version!r}",
                       "cniVersion must look like 1.1.0")
    return int(parts[0]), int(parts[1]), int(parts[2])


def validate_container_id(value: str, bounded: bool = True) -> None:
    """The container ID's one rule (:mod:`overlay.util.containerid`); ``bounded=False``
    (DEL, CHECK) waives its length bound."""
    problem = container_id_problem(value, bounded)
    if problem:
        raise CNIError(CNIError.INVALID_ENV, f"CNI_CONTAINERID {problem}",
                       f"CNI_CONTAINERID={value!r:.80}" if value else
                       "the runtime must pass the container ID in CNI_CONTAINERID")


def validate_ifname(value: str) -> None:
    problem = ifname_problem(value)
    if problem:
        raise CNIError(CNIError.INVALID_ENV, f"CNI_IFNAME {problem}",
                       f"CNI_IFNAME={value!r} is not a valid Linux interface name")


def validate_network_name(value: Any, bounded: bool = True) -> None:
    """The network name's rule; ``bounded=False`` (DEL) waives its length bound, as
    :func:`validate_container_id` does: nothing is stored under a name no ADD accepts."""
    if not isinstance(value, str) or not value:
        raise CNIError(CNIError.INVALID_CONFIG, "network config has no \"name\"",
                       "every network config needs a name (letters, digits, '_', '.', '-')")
    if bounded and len(value) > MAX_NETWORK_NAME:
        raise CNIError(CNIError.INVALID_CONFIG, "network name is too long",
                       f"{len(value)} characters (at most {MAX_NETWORK_NAME}: it names the "
                       "IPAM store's directory)")
    if not _NAME_RE.fullmatch(value):
        raise CNIError(CNIError.INVALID_CONFIG, "invalid characters in network name",
                       f"{value!r}: must start with a letter or digit and contain only "
                       "letters, digits, '_', '.' and '-'")


def parse_cni_args(text: str) -> dict[str, str]:
    """``IgnoreUnknown=1;IP=10.244.1.5;K8S_POD_NAME=web`` -> dict."""
    out: dict[str, str] = {}
    for item in filter(None, text.split(";")):
        key, sep, value = item.partition("=")
        if not sep or not _ARG_RE.fullmatch(key):
            raise CNIError(CNIError.INVALID_ENV, "malformed CNI_ARGS",
                           f"{item!r} is not KEY=VALUE (CNI_ARGS is 'K1=V1;K2=V2')")
        out[key] = value
    return out


def env_size(env: Mapping[str, str]) -> int:
    """Bytes of the CNI_* variables as the executable entry sends them to the server."""
    items = [f"{k}={v}".encode("utf-8", "surrogateescape") for k, v in env.items()
             if k.startswith("CNI_")]
    return sum(map(len, items)) + max(0, len(items) - 1)


def check_size(env_len: int, stdin_len: int) -> None:
    """Refuse an oversized request before decoding any of it (both paths, same codes)."""
    if env_len > MAX_ENV:
        raise CNIError(CNIError.INVALID_ENV, "CNI_* environment too large",
                       f"{env_len} bytes, at most {MAX_ENV}")
    if stdin_len > MAX_STDIN:
        raise CNIError(CNIError.INVALID_CONFIG, "network config too large",
                       f"{stdin_len} bytes on stdin, at most {MAX_STDIN}")


def error_output(error: CNIError, cni_version: str = LATEST_VERSION) -> bytes:
    """The one rendering of an error as the plugin's stdout."""
    return json.dumps(error.to_dict(cni_version)).encode() + b"\n"


def decode_config(stdin: bytes) -> dict[str, Any]:
    if not stdin.strip():
        raise CNIError(CNIError.DECODE_FAILURE, "no network config on stdin",
                       "the runtime must pass the network config as JSON on stdin")
    try:
        config = jsontext.loads(stdin)
    except ValueError as e:  # [[[[...]]]] too: "nested too deeply"
        raise CNIError(CNIError.DECODE_FAILURE, "network config is not valid JSON",
                       str(e)) from None
    if not isinstance(config, dict):
        raise CNIError(CNIError.DECODE_FAILURE, "network config is not a JSON object",
                       f"got {type(config).__name__}")
    return config


def check_version(command: str, config: Mapping[str, Any]) -> str:
    version = config.get("cniVersion", "")
    if not isinstance(version, str) or not version:
        raise CNIError(CNIError.DECODE_FAILURE, "network config has no cniVersion",
                       f"set \"cniVersion\" to one of {', '.join(SUPPORTED_VERSIONS)}")
    wanted = version_tuple(version)
    if version not in SUPPORTED_VERSIONS:
        raise CNIError(CNIError.INCOMPATIBLE_VERSION, "incompatible CNI versions",
                       f"config is {version}, plugin supports {', '.join(SUPPORTED_VERSIONS)}")
    minimum = _MIN_VERSION.get(command)
    if minimum and wanted < version_tuple(minimum):
        raise CNIError(CNIError.INCOMPATIBLE_VERSION,
                       f"config version does not allow {command}",
                       f"{command} needs cniVersion {minimum} or later, config is {version}")
    return version


def parse_request(env: Mapping[str, str], stdin: bytes, netns_fd: int | None = None,
                  host_netns_fd: int | None = None, reaper: Any = None) -> Request:
    """Validate env + stdin into a Request, or raise CNIError (changes nothing)."""
    command = env.get("CNI_COMMAND", "")
    if not command:
        raise CNIError(CNIError.INVALID_ENV, "required env variables [CNI_COMMAND] missing",
                       f"CNI_COMMAND must be one of {', '.join(COMMANDS)}")
    if command not in COMMANDS:
        raise CNIError(CNIError.INVALID_ENV, f"unknown CNI_COMMAND: {command}",
                       f"CNI_COMMAND must be one of {', '.join(COMMANDS)}")
    if command == "VERSION":
        return Request(command, _version_for_version_cmd(stdin), {})
    missing = [k for k in _REQUIRED_ENV[command] if not env.get(k)]
    if missing:
        raise CNIError(CNIError.INVALID_ENV,
                       f"required env variables [{','.join(missing)}] missing",
                       f"{command} needs {', '.join(_REQUIRED_ENV[command])}")
    # STATUS and GC take no container: whatever a runtime leaves in these variables is not
    # used, so it is dropped rather than carried on unvalidated.
    container_id = ifname = ""
    if "CNI_CONTAINERID" in _REQUIRED_ENV[command]:
        container_id, ifname = env.get("CNI_CONTAINERID", ""), env.get("CNI_IFNAME", "")
        validate_container_id(container_id, bounded=command == "ADD")
        validate_ifname(ifname)
    args = parse_cni_args(env.get("CNI_ARGS", ""))
    config = decode_config(stdin)
    version = check_version(command, config)
    validate_network_name(config.get("name"), bounded=command != "DEL")
    return Request(command, version, config, container_id, env.get("CNI_NETNS", ""),
                   ifname, args, env.get("CNI_PATH", ""), netns_fd, host_netns_fd, reaper)


def _stdin_version(stdin: bytes) -> Any:
    """The cniVersion on stdin if it parses (whatever its type), else None."""
    try:
        return jsontext.loads(stdin).get("cniVersion")
    except (ValueError, AttributeError):
        return None


def _version_for_version_cmd(stdin: bytes) -> str:
    """VERSION echoes the input's cniVersion when there is a usable one."""
    version = _stdin_version(stdin)
    return version if version in SUPPORTED_VERSIONS else LATEST_VERSION


def _error_version(stdin: bytes) -> str:
    version = _stdin_version(stdin)
    return version if isinstance(version, str) and version else LATEST_VERSION


def shown(value: str | None) -> str:
    """A runtime's value for a log line: as is when plain, else quoted (a newline in a
    name must not forge a second log line)."""
    if value is None or (value.isprintable() and not any(c.isspace() for c in value)):
        return str(value)
    return repr(value)


def to_cni_error(error: OverlayError) -> CNIError:
    """The one table from the project's errors to CNI codes."""
    if isinstance(error, CNIError):
        return error
    if isinstance(error, NetlinkOpError):
        return CNIError(ERR_KERNEL, str(error), f"errno {error.code}")
    if isinstance(error, IPAMError):
        return CNIError(ERR_IPAM, str(error))
    return CNIError(ERR_INTERNAL, str(error))


def run(env: Mapping[str, str], stdin: bytes, handlers: Mapping[str, Handler],
        netns_fd: int | None = None, host_netns_fd: int | None = None,
        reaper: Any = None) -> tuple[int, bytes]:
    """Run one invocation: returns (exit code, stdout bytes).  Never raises."""
    try:
        check_size(env_size(env), len(stdin))
    except CNIError as e:
        log.warning("CNI %s refused: %s (%s)", shown(env.get("CNI_COMMAND") or "-"), e.msg,
                    e.details)
        return 1, error_output(e)
    try:
        request = parse_request(env, stdin, netns_fd, host_netns_fd, reaper)
        if request.command == "VERSION":
            result: dict[str, Any] | None = {"cniVersion": request.cni_version,
                                             "supportedVersions": list(SUPPORTED_VERSIONS)}
        else:
            result = handlers[request.command](request)
        return 0, (json.dumps(result).encode() + b"\n") if result is not None else b""
    except OverlayError as e:
        error = to_cni_error(e)
    except Exception as e:  # a bug: still answer with error JSON, never a traceback on stdout
        log.exception("unexpected error in CNI %s", env.get("CNI_COMMAND"))
        error = CNIError(ERR_INTERNAL, f"internal error: {type(e).__name__}: {e}")
    log.warning("CNI %s %s/%s failed: code %d: %s %s", shown(env.get("CNI_COMMAND") or "-"),
                shown(env.get("CNI_CONTAINERID", "")), shown(env.get("CNI_IFNAME", "")),
                error.code,
                error.msg, error.details)
    return 1, error_output(error, _error_version(stdin))
