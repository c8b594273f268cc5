"""``ringstack-ctl``: run and administer a management node."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

import click
import orjson

from mgmt.config import ConfigError, NodeConfig, load_config


def _config(path: str | None) -> NodeConfig:
    try:
        return load_config(path)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Administer ringstack management nodes."""


@main.command()
@click.option("--config", "config_path", default=None, help="TOML config file [env RINGSTACK_CONFIG]")
def start(config_path: str | None) -> None:
    """Run a management node in the foreground until SIGTERM/SIGINT."""
    from mgmt.node import ManagementNode

    config = _config(config_path)
    logging.basicConfig(
        level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    # At DEBUG the AMQP libraries log every frame with its body, passwords included: never below INFO.
    for noisy in ("aiormq", "aio_pika", "amqp", "kombu"):
        logging.getLogger(noisy).setLevel(max(logging.INFO, logging.getLogger().level))
    node = ManagementNode(config)
    drained = asyncio.run(node.run_until_signalled())
    sys.exit(0 if drained else 1)


@main.command()
@click.option("--config", "config_path", default=None, help="TOML config file [env RINGSTACK_CONFIG]")
@click.option("-f", "--format", "fmt", type=click.Choice(["table", "json", "yaml"]), default="table")
def status(config_path: str | None, fmt: str) -> None:
    """Every management node: state, heartbeat age, the ring epoch it sees, what it owns, its queues."""
    from mgmt.cli.output import render
    from mgmt.cli.status import cluster_status

    config = _config(config_path)
    try:
        nodes = cluster_status(config)
    except Exception as exc:
        raise click.ClickException(f"cannot read the cluster's state: {exc}") from None
    click.echo(render({"inventories": nodes}, fmt))
    if not any(n["state"] == "alive" for n in nodes):
        sys.exit(1)


@main.group()
def db() -> None:
    """Database schema."""


@db.command()
@click.option("--config", "config_path", default=None)
def upgrade(config_path: str | None) -> None:
    """Apply every pending migration."""
    from mgmt.core.migrate import current
    from mgmt.core.migrate import upgrade as do_upgrade

    config = _config(config_path)
    try:
        do_upgrade(config.database_url)
    except Exception as exc:
        raise click.ClickException(f"migration failed: {exc}") from None
    click.echo(f"database at revision {current(config.database_url)}")


@main.group()
def schema() -> None:
    """API message schemas."""


@schema.command("export")
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True), default=None)
def export(output: str | None) -> None:
    """Write the JSON Schema of every API message and reply, keyed by API name, and of the
    canonical events under "events" (names, kinds, actions, bodies); stdout by default."""
    from schema.events import events_schema
    from schema.registry import load_all

    exported = {**load_all().json_schema(), "events": events_schema()}
    data = orjson.dumps(exported, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
    if output:
        Path(output).write_bytes(data + b"\n")
    else:
        click.echo(data.decode())


if __name__ == "__main__":
    main()
