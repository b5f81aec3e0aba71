"""overlayctl: inspect and operate leases and the network config, diagnose a node.

Each command group lives in its own module and registers itself on ``cli`` below.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import click

from overlay.errors import OverlayError
from overlay.subnet.etcdconf import (
    DEFAULT_ENDPOINTS,
    DEFAULT_PREFIX,
    EtcdOptions,
    make_etcd_options,
)
from overlay.util.text import format_table


@dataclass
class CLIContext:
    etcd_flags: dict[str, Any]
    output: str

    def etcd_options(self) -> EtcdOptions:
        return make_etcd_options(**self.etcd_flags)

    @property
    def json(self) -> bool:
        return self.output == "json"


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
@click.option("--etcd-endpoints", default=DEFAULT_ENDPOINTS, show_default=True,
              help="Comma-separated etcd endpoints.")
@click.option("--etcd-prefix", default=DEFAULT_PREFIX, show_default=True,
              help="etcd key prefix (Flannel's is /coreos.com/network).")
@click.option("--etcd-cafile", type=click.Path(dir_okay=False), help="CA certificate for etcd TLS.")
@click.option("--etcd-certfile", type=click.Path(dir_okay=False), help="Client certificate.")
@click.option("--etcd-keyfile", type=click.Path(dir_okay=False), help="Client key.")
@click.option("--etcd-username", help="etcd username (auth).")
@click.option("--etcd-password", help="etcd password (auth).")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table",
              show_default=True, help="Output format.")
@click.option("-v", "--verbose", count=True, help="More logging on stderr (-vv for debug).")
@click.pass_context
def cli(ctx: click.Context, etcd_endpoints: str, etcd_prefix: str, etcd_cafile: str | None,
        etcd_certfile: str | None, etcd_keyfile: str | None, etcd_username: str | None,
        etcd_password: str | None, output: str, verbose: int) -> None:
    """Operate the overlay pod network."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ctx.obj = CLIContext(
        etcd_flags={"endpoints": etcd_endpoints, "prefix": etcd_prefix, "cafile": etcd_cafile,
                        "certfile": etcd_certfile, "keyfile": etcd_keyfile,
                        "username": etcd_username, "password": etcd_password},
        output=output,
    )


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A kubectl-style table (:func:`overlay.util.text.format_table`) on stdout."""
    click.echo(format_table(headers, rows))


def print_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=False))


def main(argv: Sequence[str] | None = None) -> None:
    cli.main(args=argv, prog_name="overlayctl")


# Command groups register themselves on `cli` when imported.
from overlay.cli import _commands  # noqa: E402,F401
