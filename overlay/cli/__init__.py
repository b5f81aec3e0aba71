"""overlayctl: inspect and operate leases and the network config, diagnose a node.

Each command group lives in its own module and registers itself on ``cli`` below.

The global options (``-o``, ``--etcd-*``, ``-v``) are accepted before or after the
subcommand, as kubectl users type them: :func:`global_options` adds the same options to
the top-level group and to every command, and each one given on the command line is
merged into the shared :class:`CLIContext` as it is parsed, so a value given after the
subcommand (parsed later) wins over one given before.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import click
from click.core import ParameterSource

from overlay.errors import OverlayError
from overlay.subnet.etcdconf import (
    DEFAULT_ENDPOINTS,
    DEFAULT_PREFIX,
    EtcdOptions,
    make_etcd_options,
)
from overlay.util.text import format_table
from overlay.util.version import version_line

F = TypeVar("F", bound=Callable[..., Any])

# The etcd options, by their make_etcd_options keyword.
ETCD_DEFAULTS: dict[str, str | None] = {
    "endpoints": DEFAULT_ENDPOINTS, "prefix": DEFAULT_PREFIX, "cafile": None,
    "certfile": None, "keyfile": None, "username": None, "password": None,
}


@dataclass
class CLIContext:
    etcd_flags: dict[str, Any] = field(default_factory=lambda: dict(ETCD_DEFAULTS))
    output: str = "table"
    verbose: int = 0

    def etcd_options(self) -> EtcdOptions:
        return make_etcd_options(**self.etcd_flags)

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
        ctx.ensure_object(CLIContext).etcd_flags[param.name.removeprefix("etcd_")] = value


def _set_output(ctx: click.Context, param: click.Parameter, value: str) -> None:
    if _given(ctx, param):
        ctx.ensure_object(CLIContext).output = value


def _add_verbose(ctx: click.Context, param: click.Parameter, value: int) -> None:
    # -v counts wherever it is given: `-v leases list -v` is -vv.
    obj = ctx.ensure_object(CLIContext)
    obj.verbose += value or 0
    logging.getLogger().setLevel(_log_level(obj.verbose))


OUTPUTS = ("table", "wide", "json")


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

    The global options (-o, --etcd-*, -v) may be given before or after the subcommand;
    one given after it wins.
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
