"""``overlayctl config get|set``: the cluster's network config in etcd."""

from __future__ import annotations

import sys
from typing import Any

import click

from overlay.cli import CLIContext, cli, global_options, print_json, print_table
from overlay.config import (
    DEFAULT_PORT,
    DEFAULT_VNI,
    MAX_CONFIG_BYTES,
    NetworkConfig,
    parse_network_config,
)
from overlay.errors import ConfigError
from overlay.subnet.registry import EtcdRegistry


@cli.group("config")
@global_options
def config_group() -> None:
    """Show or set the network config (Flannel's JSON fields)."""


def config_row(cfg: NetworkConfig) -> list[Any]:
    b = cfg.backend
    return [cfg.network, cfg.subnet_len, cfg.subnet_min, cfg.subnet_max, cfg.subnet_count,
            b.type, b.vni, b.port]


def ipv6_row(cfg: NetworkConfig) -> list[Any]:
    return [cfg.ipv6_network, cfg.ipv6_subnet_len, cfg.ipv6_subnet_min, cfg.ipv6_subnet_max,
            cfg.ipv6_subnet_count]


@config_group.command("get")
@global_options
@click.pass_obj
def config_get(obj: CLIContext) -> None:
    """Print the network config stored in etcd."""
    with EtcdRegistry(obj.etcd_options()) as reg:
        cfg = reg.get_config()
    if obj.json:
        print_json(cfg.to_dict())
    else:
        # an IPv6-only config's primary range is the IPv6 one: one table, named so
        print_table(["IPV6-NETWORK" if cfg.ipv6_only else "NETWORK", "SUBNET-LEN",
                     "SUBNET-MIN", "SUBNET-MAX", "SUBNETS", "BACKEND", "VNI", "PORT"],
                    [config_row(cfg)])
        if cfg.dual_stack:
            click.echo()
            print_table(["IPV6-NETWORK", "SUBNET-LEN", "SUBNET-MIN", "SUBNET-MAX",
                         "SUBNETS"], [ipv6_row(cfg)])


def _read_file(path: str) -> bytes:
    """The file's bytes, at most one byte over the parser's bound (so a huge file or
    an endless stdin is refused by size, not read whole); decoding is the parser's."""
    limit = MAX_CONFIG_BYTES + 1
    if path == "-":
        return sys.stdin.buffer.read(limit)
    try:
        with open(path, "rb") as f:
            return f.read(limit)
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from e


def build_config(network: str | None, subnet_len: int | None, vni: int | None,
                 port: int | None, file: str | None, ipv6_network: str | None = None,
                 ipv6_subnet_len: int | None = None) -> NetworkConfig:
    """The config from either -f FILE or the flags, validated; nothing is written here."""
    flags = (network, subnet_len, vni, port, ipv6_network, ipv6_subnet_len)
    if file and any(v is not None for v in flags):
        raise ConfigError("give either -f FILE or --network/--subnet-len/--vni/--port/"
                          "--ipv6-network/--ipv6-subnet-len, not both")
    if file:
        return parse_network_config(_read_file(file))
    if network is None and ipv6_network is None:
        raise ConfigError("config set needs --network CIDR (e.g. --network 10.244.0.0/16), "
                          "--ipv6-network CIDR alone (IPv6-only) or -f FILE")
    if network is None and subnet_len is not None:
        raise ConfigError("--subnet-len is IPv4's (with --network); an IPv6-only network "
                          "takes --ipv6-subnet-len")
    # --ipv6-network without --network: IPv6-only (Flannel's EnableIPv4 false)
    obj: dict[str, Any] = ({"Network": network} if network is not None
                           else {"EnableIPv4": False})
    obj["Backend"] = {"Type": "vxlan"}
    if subnet_len is not None:
        obj["SubnetLen"] = subnet_len
    if vni is not None:
        obj["Backend"]["VNI"] = vni
    if port is not None:
        obj["Backend"]["Port"] = port
    if ipv6_subnet_len is not None and ipv6_network is None:
        raise ConfigError("--ipv6-subnet-len needs --ipv6-network CIDR "
                          "(e.g. --ipv6-network fd00:10:244::/56)")
    if ipv6_network is not None:
        obj.update(EnableIPv6=True, IPv6Network=ipv6_network)
        if ipv6_subnet_len is not None:
            obj["IPv6SubnetLen"] = ipv6_subnet_len
    return parse_network_config(obj)


@config_group.command("set")
@global_options
@click.option("--network", metavar="CIDR", help="The pod network, e.g. 10.244.0.0/16.")
@click.option("--subnet-len", type=int,
              help="Prefix length of each node's subnet [default: 24 for a /22 or larger "
                   "network, else the network's prefix + 2].")
@click.option("--vni", type=int, help=f"VXLAN network identifier [default: {DEFAULT_VNI}].")
@click.option("--port", type=int, help=f"VXLAN UDP port [default: {DEFAULT_PORT}].")
@click.option("--ipv6-network", metavar="CIDR",
              help="The IPv6 pod network, e.g. fd00:10:244::/56 (sets EnableIPv6): "
                   "dual-stack with --network, IPv6-only (EnableIPv4 false) without.")
@click.option("--ipv6-subnet-len", type=int,
              help="Prefix length of each node's IPv6 subnet [default: 64 for a /62 or "
                   "larger network, else the network's prefix + 2].")
@click.option("-f", "--file", "file", metavar="FILE",
              help="Read the whole config JSON from FILE ('-' for stdin).")
@click.pass_obj
def config_set(obj: CLIContext, network: str | None, subnet_len: int | None, vni: int | None,
               port: int | None, ipv6_network: str | None, ipv6_subnet_len: int | None,
               file: str | None) -> None:
    """Validate a network config, then store it in etcd."""
    cfg = build_config(network, subnet_len, vni, port, file, ipv6_network, ipv6_subnet_len)
    with EtcdRegistry(obj.etcd_options()) as reg:
        reg.put_config(cfg)
    if obj.json:
        print_json(cfg.to_dict())
    else:
        click.echo(f"network config set: {cfg.to_json()}")
