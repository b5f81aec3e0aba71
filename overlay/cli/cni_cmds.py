"""overlayctl install-cni: install the CNI plugin entry and conflist (like Flannel's)."""

from __future__ import annotations

import click

from overlay.cli import CLIContext, cli, global_options, print_json, runtime_default
from overlay.cni.install import (
    DEFAULT_BIN_DIR,
    DEFAULT_CONF_DIR,
    PluginSettings,
    install_cni,
    portmap_warning,
)


@cli.command("install-cni")
@global_options
@click.option("--bin-dir", default=DEFAULT_BIN_DIR, show_default=True,
              type=click.Path(file_okay=False), help="The runtime's CNI plugin directory.")
@click.option("--conf-dir", default=DEFAULT_CONF_DIR, show_default=True,
              type=click.Path(file_okay=False), help="The runtime's CNI config directory.")
@click.option("--bridge", default=PluginSettings.bridge, show_default=True,
              help="The node bridge named in the conflist.")
@click.option("--subnet-file", default=PluginSettings.subnet_file, show_default=True,
              help="The subnet.env overlayd writes (the conflist's subnetFile).")
@click.option("--data-dir", default=PluginSettings.data_dir, show_default=True,
              help="The IPAM directory (the conflist's dataDir).")
@click.pass_context
def install_cni_cmd(ctx: click.Context, bin_dir: str, conf_dir: str, bridge: str,
                    subnet_file: str, data_dir: str) -> None:
    """Install the overlay plugin and its conflist (chained with portmap), atomically.

    On a node running overlayd, the dirs and subnet.env default to the ones it records
    (its runtime file), so a reinstall lands where overlayd and diagnose look."""
    obj = ctx.ensure_object(CLIContext)
    rt = obj.runtime
    if rt is not None:
        bin_dir = runtime_default(ctx, "bin_dir", bin_dir, rt.cni_bin_dir.split(":")[0])
        conf_dir = runtime_default(ctx, "conf_dir", conf_dir, rt.cni_conf_dir)
        subnet_file = runtime_default(ctx, "subnet_file", subnet_file, rt.subnet_file)
    result = install_cni(bin_dir, conf_dir,
                         settings=PluginSettings(bridge, subnet_file, data_dir))
    if obj.json:
        print_json({"plugin": result.plugin_path, "plugin_changed": result.plugin_changed,
                    "conflist": result.conflist_path,
                    "conflist_changed": result.conflist_changed,
                    "portmap_found": result.portmap_found})
    else:
        for path, changed in ((result.plugin_path, result.plugin_changed),
                              (result.conflist_path, result.conflist_changed)):
            click.echo(f"{path}: {'installed' if changed else 'unchanged'}")
    warning = portmap_warning(result, bin_dir)
    if warning:
        click.echo(warning, err=True)
