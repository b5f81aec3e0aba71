"""overlayctl: inspect and operate leases and the network config, diagnose a node.

Each command group lives in its own module and registers itself on ``cli`` below.

On a node no flags are needed: every option overlayd knows (etcd, TLS and auth, its
files, devices and addresses) defaults to the node's runtime file (``--runtime-file``,
``OVERLAYCTL_RUNTIME_FILE``, default /run/overlay/overlayd.json, see
``overlay.runtimefile``); a flag or environment variable still wins, option by option.

The global options (``-o``, ``--etcd-*``, ``-v``) are accepted before or after the
subcommand, as kubectl users type them: :func:`global_options` adds the same options to
the top-level group and to every command, and each one given on the command line is
merged into the shared :class:`CLIContext` as it is parsed, so a value given after the
subcommand (parsed later) wins over one given before.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, TypeVar

import click
from click.core import ParameterSource

from overlay.config import check_etcd_prefix, etcd_prefix_problem
from overlay.errors import OverlayError
from overlay.runtimefile import DEFAULT_RUNTIME_FILE, RuntimeInfo, load_runtime_file
from overlay.subnet.etcdconf import (
    DEFAULT_ENDPOINTS,
    DEFAULT_PREFIX,
    EtcdOptions,
    make_etcd_options,
)
from overlay.util.seconds import seconds_problem
from overlay.util.text import format_table
from overlay.util.version import version_line

F = TypeVar("F", bound=Callable[..., Any])

log = logging.getLogger(__name__)

# The etcd options, by their make_etcd_options keyword.
ETCD_DEFAULTS: dict[str, str | None] = {
    "endpoints": DEFAULT_ENDPOINTS, "prefix": DEFAULT_PREFIX, "cafile": None,
    "certfile": None, "keyfile": None, "username": None, "password": None,
    "password_file": None,
}


@dataclass
class CLIContext:
    etcd_flags: dict[str, Any] = field(default_factory=dict)  # the ones the user gave
    output: str = "table"
    verbose: int = 0
    runtime_path: str | None = None  # --runtime-file as given ('' = none); None = default

    def etcd_options(self) -> EtcdOptions:
        """Defaults < the runtime file < the user's flags and environment."""
        flags: dict[str, Any] = dict(ETCD_DEFAULTS)
        rt = self.runtime
        if rt is not None:
            flags.update(rt.etcd_flags())
        flags.update(self.etcd_flags)
        if "prefix" in self.etcd_flags:
            source = "--etcd-prefix"
        elif rt is not None and rt.etcd_flags().get("prefix") is not None:
            source = f"the runtime file's etcd.prefix ({self.runtime_path or DEFAULT_RUNTIME_FILE})"
        else:
            source = "etcd prefix"
        check_etcd_prefix(flags["prefix"], source)
        return make_etcd_options(**flags)

    @cached_property
    def runtime(self) -> RuntimeInfo | None:
        """This node's overlayd settings, or None (no runtime file here, or ``''``); read
        once, when a command first needs it (after every option was parsed).  A file
        named explicitly must exist; any file read must be valid."""
        path = DEFAULT_RUNTIME_FILE if self.runtime_path is None else self.runtime_path
        if not path:
            return None
        if self.runtime_path is None:  # only assumed: not every machine runs overlayd
            if not os.path.lexists(path):
                return None
            if not os.access(path, os.R_OK):
                log.warning("%s is root-only: not using overlayd's settings (run as root, "
                            "or give the options)", path)
                return None
        return load_runtime_file(path)

    @property
    def json(self) -> bool:
        return self.output == "json"

    @property
    def wide(self) -> bool:
        return self.output == "wide"


def _log_level(verbose: int) -> int:
    return logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG


def _given(ctx: click.Context, param: click.Parameter) -> bool:
    """True when the user set this option (command line or environment), not its default."""
    assert param.name is not None
    return ctx.get_parameter_source(param.name) not in (ParameterSource.DEFAULT, None)


def _set_etcd(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    if _given(ctx, param):
        assert param.name is not None
        if param.name == "etcd_prefix" and (problem := etcd_prefix_problem(value)):
            raise click.BadParameter(f"{_shown(value)}: {problem}")
        ctx.ensure_object(CLIContext).etcd_flags[param.name.removeprefix("etcd_")] = value


def _set_runtime(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    assert param.name is not None
    if ctx.parent is not None and \
            ctx.get_parameter_source(param.name) is ParameterSource.ENVIRONMENT:
        return  # the group's copy read the variable: a flag before the command still wins
    if _given(ctx, param):
        ctx.ensure_object(CLIContext).runtime_path = value or ""


def runtime_default(ctx: click.Context, name: str, value: Any, runtime_value: Any) -> Any:
    """An option of the running command: the user's value when given, else the runtime
    file's (when it has one), else the option's own default."""
    if ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, None):
        return value
    return value if runtime_value is None else runtime_value


def _set_output(ctx: click.Context, param: click.Parameter, value: str) -> None:
    if _given(ctx, param):
        ctx.ensure_object(CLIContext).output = value


def _add_verbose(ctx: click.Context, param: click.Parameter, value: int) -> None:
    # -v counts wherever it is given: `-v leases list -v` is -vv.
    obj = ctx.ensure_object(CLIContext)
    obj.verbose += value or 0
    logging.getLogger().setLevel(_log_level(obj.verbose))


OUTPUTS = ("table", "wide", "json")


def _shown(value: object, limit: int = 60) -> str:
    """A rejected value as an error quotes it: one line (escaped), bounded."""
    text = ascii(value) if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit] + "...(truncated)"


class Seconds(click.ParamType):
    """A duration option (timeouts): a finite number of seconds in ``low..high``.
    click's FloatRange lets NaN through (every comparison with it is false) and, with no
    upper bound, infinity; NaN made ``leases watch --timeout nan`` never end."""

    name = "seconds"

    def __init__(self, low: float, high: float):
        self.low, self.high = low, high

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> float:
        if isinstance(value, float) and seconds_problem(value, self.low, self.high) is None:
            return value
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            self.fail(f"{_shown(value)} is not a number of seconds", param, ctx)
        problem = seconds_problem(seconds, self.low, self.high)
        if problem:
            self.fail(f"{_shown(value)}: {problem}", param, ctx)
        return seconds

    def __repr__(self) -> str:
        return f"Seconds({self.low:g}, {self.high:g})"


def global_options(f: F) -> F:
    """Adds ``--etcd-*``, ``-o/--output`` and ``-v`` to a command or group (see the module
    docstring); they write into ``ctx.obj`` and are not passed to ``f``."""
    return _global_options(f, OUTPUTS)


def yaml_global_options(f: F) -> F:
    """:func:`global_options` for a command that also prints ``-o yaml`` (Kubernetes
    objects, as kubectl does)."""
    return _global_options(f, (*OUTPUTS, "yaml"))


def _global_options(f: F, outputs: Sequence[str]) -> F:
    common: dict[str, Any] = {"expose_value": False, "is_eager": False}
    opts = [
        click.option("--etcd-endpoints", default=DEFAULT_ENDPOINTS, show_default=True,
                     callback=_set_etcd, help="Comma-separated etcd endpoints.", **common),
        click.option("--etcd-prefix", default=DEFAULT_PREFIX, show_default=True,
                     callback=_set_etcd,
                     help="etcd key prefix (Flannel's is /coreos.com/network).", **common),
        click.option("--etcd-cafile", type=click.Path(dir_okay=False), callback=_set_etcd,
                     help="CA certificate for etcd TLS.", **common),
        click.option("--etcd-certfile", type=click.Path(dir_okay=False), callback=_set_etcd,
                     help="Client certificate.", **common),
        click.option("--etcd-keyfile", type=click.Path(dir_okay=False), callback=_set_etcd,
                     help="Client key.", **common),
        click.option("--etcd-username", callback=_set_etcd, help="etcd username (auth).",
                     **common),
        click.option("--etcd-password", callback=_set_etcd, help="etcd password (auth).",
                     **common),
        click.option("--etcd-password-file", type=click.Path(dir_okay=False),
                     callback=_set_etcd, help="File holding the etcd password.", **common),
        click.option("--runtime-file", envvar="OVERLAYCTL_RUNTIME_FILE", callback=_set_runtime,
                     help=f"overlayd's runtime file, the defaults of every option here "
                     f"[default: {DEFAULT_RUNTIME_FILE} if present; '' for none].", **common),
        click.option("-o", "--output", type=click.Choice(list(outputs)),
                     default="table", show_default=True, callback=_set_output,
                     help="Output format (wide: a table with more columns, where a "
                     "command has them).", **common),
        click.option("-v", "--verbose", count=True, callback=_add_verbose,
                     help="More logging on stderr (-vv for debug).", **common),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def _print_version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(version_line("overlayctl"))
        ctx.exit(0)


class OverlayGroup(click.Group):
    """Turns an OverlayError anywhere below into one line on stderr and exit 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except OverlayError as e:
            click.echo(f"error: {e}", err=True)
            ctx.exit(1)


@click.group(cls=OverlayGroup, context_settings={"help_option_names": ["-h", "--help"],
                                                 "auto_envvar_prefix": "OVERLAYCTL"})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True,
              callback=_print_version, help="Print overlayctl's version and exit.")
@global_options
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Operate the overlay pod network.

    The global options (-o, --etcd-*, --runtime-file, -v) may be given before or after
    the subcommand; one given after it wins. On a node every option defaults to what the
    node's overlayd runs with (its runtime file).
    """
    obj = ctx.ensure_object(CLIContext)
    logging.basicConfig(level=_log_level(obj.verbose), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]],
                wrap: int | None = None) -> None:
    """A kubectl-style table (:func:`overlay.util.text.format_table`) on stdout; cells
    longer than ``wrap`` continue on the next lines."""
    click.echo(format_table(headers, rows, wrap=wrap))


def print_json(obj: Any, one_per_line: bool = False) -> None:
    """``obj`` indented; with ``one_per_line`` a list prints one compact object per line
    (still one JSON document): Python's indenting encoder is pure Python, 0.8 s for a
    listing of 10 000 pods, the compact one is C."""
    if one_per_line and isinstance(obj, list) and obj:
        click.echo("[\n" + ",\n".join(json.dumps(item) for item in obj) + "\n]")
    else:
        click.echo(json.dumps(obj, indent=2, sort_keys=False))


def main(argv: Sequence[str] | None = None) -> None:
    cli.main(args=argv, prog_name="overlayctl")


# Command groups register themselves on `cli` when imported.
from overlay.cli import _commands  # noqa: E402,F401
