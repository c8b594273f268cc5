"""``ringstack-ctl``: run and administer a management node."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click
import orjson

from mgmt.config import ConfigError, NodeConfig, load_config

if TYPE_CHECKING:
    from mgmt.cli.supervise import State


def _config(path: str | None) -> NodeConfig:
    try:
        return load_config(path)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Administer ringstack management nodes."""


_CONFIG_START = click.option(
    "--config", "config_path", default=None, help="TOML config file [env RINGSTACK_CONFIG]"
)


_RUN_DIR = click.option(
    "--run-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="the supervised node's pid, state and log files [env RINGSTACK_RUN_DIR, default /run/ringstack]",
)


@main.command()
@_CONFIG_START
@click.option("--supervise", is_flag=True, help="run the node under ringstack-ctl's supervision")
@click.option("--daemon", is_flag=True, help="with --supervise: detach, return once the node is ready")
@_RUN_DIR
@click.option(
    "--wait", "wait_seconds", type=float, default=120.0, show_default=True, help="--daemon: seconds to wait"
)
def start(
    config_path: str | None, supervise: bool, daemon: bool, run_dir: str | None, wait_seconds: float
) -> None:
    """Run a management node in the foreground until SIGTERM/SIGINT (drain, hand over, exit).

    Exit codes: 0 stopped, all drained; 5 stopped with work still running at the drain deadline;
    75 stopped to be restarted (ringstack-ctl restart); anything else is a crash.

    --supervise (where there is no systemd): run it as a child and keep it running: start it again
    at once after a restart, with back-off (1 s doubling to 30 s) after a crash; SIGTERM stops it,
    SIGHUP restarts it. --daemon: the supervisor detaches (log in RUN_DIR/supervisor.log) and this
    command returns once the node is ready (exit 4 after --wait); nothing happens if it already runs."""
    from mgmt.cli import supervise as sv

    if supervise or daemon:
        _config(config_path)  # a bad config fails here, not in a restart loop
        directory = Path(run_dir) if run_dir else sv.default_run_dir()
        if not daemon:
            supervisor = sv.Supervisor(sv.node_argv(config_path), directory, sys.stderr)
            sys.exit(supervisor.run())
        running = sv.read_state(directory)
        if running is not None:
            click.echo(
                f"already running: supervisor {running.supervisorPid}, node {running.nodeUuid} ({running.state})"
            )
            return
        pid = sv.spawn_detached(config_path, directory)
        state = sv.wait_for(
            directory, lambda s: s.supervisorPid == pid and s.state == "ready", wait_seconds, pid
        )
        if state is None:
            click.echo(
                f"Error: the node is not ready after {wait_seconds:g} s:\n{sv.log_tail(directory)}", err=True
            )
            sys.exit(4 if sv.pid_alive(pid) else 1)
        click.echo(f"node {state.nodeUuid} ready (supervisor {pid}, log {directory / 'supervisor.log'})")
        return

    from mgmt.node import ManagementNode

    config = _config(config_path)
    logging.basicConfig(
        level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    if config.log_file:
        from logging.handlers import WatchedFileHandler

        handler = WatchedFileHandler(config.log_file)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger().addHandler(handler)
    # At DEBUG the AMQP libraries log every frame with its body, passwords included: never below INFO.
    for noisy in ("aiormq", "aio_pika", "amqp", "kombu"):
        logging.getLogger(noisy).setLevel(max(logging.INFO, logging.getLogger().level))
    node = ManagementNode(config)
    sv.die_with_supervisor()
    drained = asyncio.run(node.run_until_signalled())
    if node.ops.restart_requested:
        sys.exit(sv.EXIT_RESTART)
    sys.exit(sv.EXIT_STOPPED if drained else sv.EXIT_UNDRAINED)


_CONFIG = click.option(
    "--config", "config_path", default=None, help="TOML config file [env RINGSTACK_CONFIG]"
)


@main.command()
@_CONFIG
@click.option("-f", "--format", "fmt", type=click.Choice(["table", "json", "yaml"]), default="table")
@click.option(
    "--schema", "show_schema", is_flag=True, help="print the JSON Schema of `status -f json` and exit"
)
def status(config_path: str | None, fmt: str, show_schema: bool) -> None:
    """The cluster: every node's state, readiness, ring view, jobs and queues, and a verdict.

    Exit codes: 0 healthy; 1 unhealthy (the problems are listed); 3 the database or broker cannot
    be reached."""
    from mgmt.cli.output import render
    from mgmt.cli.status import ClusterStatus, cluster_status

    if show_schema:
        click.echo(orjson.dumps(ClusterStatus.model_json_schema(), option=orjson.OPT_INDENT_2).decode())
        return
    config = _config(config_path)
    try:
        result = cluster_status(config)
    except Exception as exc:
        click.echo(f"Error: cannot read the cluster's state: {exc}", err=True)
        sys.exit(3)
    data = result.model_dump()
    if fmt == "table":
        nodes = data.pop("nodes")
        click.echo(render({"inventories": nodes}, "table"))
        data["problems"] = "; ".join(data["problems"]) or None
        click.echo(render(data, "table"))
    else:
        click.echo(render(data, fmt))
    if not result.healthy:
        sys.exit(1)


def _nodes(config: NodeConfig, prefixes: tuple[str, ...]) -> list[str]:
    from mgmt.cli.status import find_nodes

    try:
        return find_nodes(config, prefixes)
    except LookupError as exc:
        raise click.UsageError(str(exc)) from None


@main.command()
@_CONFIG
@click.argument("nodes", nargs=-1, required=True)
def drain(config_path: str | None, nodes: tuple[str, ...]) -> None:
    """Drain nodes (uuid or prefix): readiness false, no more API requests; they keep the work they
    own until they stop (ringstack-ctl stop), when it is handed over."""
    import time

    from mgmt.cli.status import send_ops
    from mgmt.ops import OPS_DRAIN

    config = _config(config_path)
    for uuid in _nodes(config, nodes):
        started = time.monotonic()
        reply = send_ops(config, uuid, OPS_DRAIN)
        click.echo(
            f"node {uuid}: draining (ready={str(reply['ready']).lower()}) in {time.monotonic() - started:.3f} s"
        )


def _local_supervisor(run_dir: str | None) -> tuple[Path, State | None]:
    from mgmt.cli.supervise import default_run_dir, read_state

    directory = Path(run_dir) if run_dir else default_run_dir()
    return directory, read_state(directory)


@main.command()
@_CONFIG
@click.argument("nodes", nargs=-1)
@click.option(
    "--timeout", type=float, default=60.0, show_default=True, help="seconds to wait for each node to exit"
)
@_RUN_DIR
def stop(config_path: str | None, nodes: tuple[str, ...], timeout: float, run_dir: str | None) -> None:
    """Stop nodes (uuid or prefix), one at a time: each drains (no new API requests), finishes or
    hands over its jobs to the other nodes, and exits. Without NODES: this machine's supervised
    node (RUN_DIR), and its supervisor. Exit 4 if one is still running after --timeout."""
    import time

    from mgmt.cli.status import node_gone, send_ops
    from mgmt.cli.supervise import pid_alive
    from mgmt.ops import OPS_STOP

    if not nodes:
        directory, state = _local_supervisor(run_dir)
        if state is None:
            click.echo(f"not running (no supervisor in {directory})")
            return
        started = time.monotonic()
        os.kill(state.supervisorPid, signal.SIGTERM)  # it sends the node SIGTERM: the drain path
        while pid_alive(state.supervisorPid):
            if time.monotonic() - started > timeout:
                click.echo(
                    f"Error: supervisor {state.supervisorPid} still runs after {timeout:.0f} s", err=True
                )
                sys.exit(4)
            time.sleep(0.1)
        click.echo(f"node {state.nodeUuid}: stopped in {time.monotonic() - started:.1f} s")
        return
    config = _config(config_path)
    for uuid in _nodes(config, nodes):
        started = time.monotonic()
        send_ops(config, uuid, OPS_STOP)
        while not node_gone(config, uuid):
            if time.monotonic() - started > timeout:
                click.echo(f"Error: node {uuid} still runs after {timeout:.0f} s", err=True)
                sys.exit(4)
            time.sleep(0.2)  # polling the broker: the node's queue goes when its process ends
        click.echo(f"node {uuid}: stopped in {time.monotonic() - started:.1f} s")


def _restart_node(config: NodeConfig, uuid: str, timeout: float) -> None:
    """ops.Restart to one node; back once it is gone and the cluster is healthy with as many ready
    nodes as before. Exits 4 past the timeout."""
    import time

    from bus.errors import RingstackError
    from mgmt.cli.status import cluster_status, node_gone, send_ops
    from mgmt.ops import OPS_RESTART

    started = time.monotonic()
    wanted = sum(1 for n in cluster_status(config).nodes if n.state == "alive" and n.ready)
    try:
        send_ops(config, uuid, OPS_RESTART)
    except RingstackError as exc:
        raise click.ClickException(f"node {uuid}: {exc}") from None
    while not node_gone(config, uuid):
        if time.monotonic() - started > timeout:
            click.echo(f"Error: node {uuid} still runs after {timeout:.0f} s", err=True)
            sys.exit(4)
        time.sleep(0.2)  # polling the broker: the node's queue goes when its process ends
    while True:
        status = cluster_status(config)
        ready = [n for n in status.nodes if n.state == "alive" and n.ready and n.uuid != uuid]
        if status.healthy and len(ready) >= wanted:
            break
        if time.monotonic() - started > timeout:
            click.echo(
                f"Error: after restarting {uuid}, {len(ready)} of {wanted} nodes ready: "
                + "; ".join(status.problems),
                err=True,
            )
            sys.exit(4)
        time.sleep(0.2)
    click.echo(f"node {uuid}: restarted, cluster healthy in {time.monotonic() - started:.1f} s")


@main.command()
@_CONFIG
@click.argument("nodes", nargs=-1)
@click.option(
    "--timeout",
    type=float,
    default=120.0,
    show_default=True,
    help="seconds for each node to stop and its successor to be ready",
)
@_RUN_DIR
def restart(config_path: str | None, nodes: tuple[str, ...], timeout: float, run_dir: str | None) -> None:
    """Restart nodes (uuid or prefix) one at a time, each as stop does (drain, finish or hand over
    its jobs, exit), started again by its supervisor (ringstack-ctl start --supervise, or systemd);
    the next one only once the cluster is back to as many ready nodes as before, and healthy.
    Without NODES: this machine's supervised node (RUN_DIR). Refused for a node nothing would
    start again. Exit 4 when a node or the cluster is not back within --timeout."""
    import time

    from mgmt.cli.supervise import wait_for

    if not nodes:
        directory, state = _local_supervisor(run_dir)
        if state is None:
            raise click.ClickException(f"no supervised node runs here (no supervisor in {directory})")
        started = time.monotonic()
        before = state.restarts
        os.kill(state.supervisorPid, signal.SIGHUP)
        pid = state.supervisorPid
        after = wait_for(directory, lambda s: s.restarts > before and s.state == "ready", timeout, pid)
        if after is None:
            click.echo(f"Error: the node is not ready again after {timeout:.0f} s", err=True)
            sys.exit(4)
        click.echo(
            f"node {state.nodeUuid}: restarted as {after.nodeUuid} in {time.monotonic() - started:.1f} s"
        )
        return
    config = _config(config_path)
    for uuid in _nodes(config, nodes):
        _restart_node(config, uuid, timeout)


@main.command()
@_CONFIG
@click.option("-n", "--lines", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("-f", "--follow", is_flag=True, help="keep printing what is appended")
def logs(config_path: str | None, lines: int, follow: bool) -> None:
    """The end of this machine's node log (log_file; under systemd: journalctl -u ringstack)."""
    import time
    from collections import deque

    config = _config(config_path)
    if not config.log_file:
        raise click.ClickException(
            "no log_file is configured: the node logs to stderr (journalctl -u ringstack)"
        )
    try:
        with open(config.log_file, encoding="utf-8", errors="replace") as f:
            for line in deque(f, maxlen=lines):
                click.echo(line, nl=False)
            while follow:
                line = f.readline()
                if line:
                    click.echo(line, nl=False)
                else:
                    time.sleep(0.5)
    except OSError as exc:
        raise click.ClickException(f"cannot read {config.log_file}: {exc}") from None
    except KeyboardInterrupt:
        pass


@main.command("collect-logs")
@_CONFIG
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, writable=True),
    required=True,
    help="the archive (.tar.gz)",
)
def collect_logs(config_path: str | None, output: str) -> None:
    """One archive for a bug report: the cluster's status, and from every live node (over the bus,
    wherever it runs) its status, its /metrics and the end of its log file."""
    from mgmt.cli.collect import collect

    config = _config(config_path)
    try:
        summary = collect(config, Path(output))
    except Exception as exc:
        raise click.ClickException(f"cannot collect: {type(exc).__name__}: {exc}") from None
    click.echo(f"{output}: {summary}")


@main.command("backup")
@_CONFIG
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, writable=True),
    required=True,
    help="the archive (.tar.gz)",
)
def backup_command(config_path: str | None, output: str) -> None:
    """Write the database and the config file to one archive (nodes may keep running)."""
    import os

    from mgmt.cli.backup import BackupError, backup

    config = _config(config_path)
    path = config_path or os.environ.get("RINGSTACK_CONFIG") or "/etc/ringstack/ringstack.toml"
    try:
        manifest = backup(config.database_url, Path(path), Path(output))
    except BackupError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"backup of {manifest['database']} at revision {manifest['revision']} written to {output}")


@main.command("restore")
@_CONFIG
@click.argument("archive", type=click.Path(exists=True, dir_okay=False))
@click.option("--force", is_flag=True, help="restore although nodes are recorded alive (they must be dead)")
@click.option(
    "--config-to",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="write the backup's config file here",
)
def restore_command(config_path: str | None, archive: str, force: bool, config_to: str | None) -> None:
    """Replace the database's contents with a backup's (all or nothing); every node must be stopped."""
    from mgmt.cli.backup import BackupError, restore

    config = _config(config_path)
    try:
        manifest = restore(
            config.database_url, Path(archive), force=force, config_to=Path(config_to) if config_to else None
        )
    except BackupError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"restored the backup of {manifest['createdAt']} (revision {manifest['revision']})")


@main.command()
@_CONFIG
@click.option("-i", "--inventory", default=None, help="a cluster from this inventory (cluster.yml, over SSH)")
@click.option(
    "--root",
    type=click.Path(file_okay=False),
    default="/opt/ringstack",
    show_default=True,
    help="all-in-one: where the node's config, run and log directories go",
)
@click.option("-e", "--extra", "extra", multiple=True, help="key=value: a playbook variable (repeatable)")
@click.option("--check", is_flag=True, help="report what would change, change nothing")
@click.option("-v", "--verbose", is_flag=True)
def install(
    config_path: str | None,
    inventory: str | None,
    root: str,
    extra: tuple[str, ...],
    check: bool,
    verbose: bool,
) -> None:
    """Install ringstack with its Ansible playbooks: an all-in-one management node on this machine
    (allinone.yml, against the broker and database of the current configuration), or a cluster from
    an inventory (cluster.yml; see ansible/inventory/example.ini). Running it again changes nothing
    that is as it should be; a changed setting restarts only the nodes it concerns."""
    from mgmt.cli.install import InstallError, allinone_vars, parse_extra, run

    try:
        variables = {} if inventory else allinone_vars(_config(config_path), Path(root).resolve())
        variables.update(parse_extra(extra))
        code, recap, seconds = run(variables, inventory, check=check, verbose=verbose)
    except InstallError as exc:
        raise click.ClickException(str(exc)) from None
    changed = sum(recap.values())
    click.echo(f"install: {'failed' if code else 'done'} in {seconds:.1f} s, {changed} change(s)")
    sys.exit(1 if code else 0)


@main.group()
def db() -> None:
    """Database schema."""


_MIGRATIONS = click.option(
    "--migrations",
    "migrations",
    type=click.Path(file_okay=False, exists=True),
    default=None,
    hidden=True,
    help="another Alembic script directory (tests)",
)


def _migrations(path: str | None) -> Path:
    from mgmt.core.migrate import MIGRATIONS

    return Path(path) if path else MIGRATIONS


def _migrate(config: NodeConfig, location: Path, contract: bool) -> None:
    """Expand steps, then contract steps when every live node runs code that knows them."""
    from mgmt.cli import upgrade as up

    steps = up.plan(config.database_url, location)
    if not steps.expand and not steps.contract:
        click.echo(f"database already at revision {steps.current}")
        return
    up.expand(config.database_url, steps, location)
    if steps.expand:
        click.echo(f"database upgraded from revision {steps.current} to {steps.expand[-1]} (expand)")
    if not steps.contract:
        return
    try:
        old = up.old_nodes(config, location)
    except Exception as exc:
        old = [f"cannot ask the nodes: {type(exc).__name__}: {exc}"]
    if old:
        message = (
            f"contract step(s) {', '.join(steps.contract)} wait until every node runs this release: "
            + "; ".join(old)
        )
        if contract:
            click.echo(f"Error: {message}", err=True)
            sys.exit(1)
        click.echo(message)
        return
    up.contract(config.database_url, location)
    click.echo(f"database contracted to revision {steps.contract[-1]}")


@db.command("upgrade")
@click.option("--config", "config_path", default=None)
@_MIGRATIONS
def db_upgrade(config_path: str | None, migrations: str | None) -> None:
    """Apply the pending expand migrations (safe while the previous release's nodes run), and the
    contract ones too when every live node runs this release (else they wait: db contract)."""
    config = _config(config_path)
    try:
        _migrate(config, _migrations(migrations), contract=False)
    except Exception as exc:
        raise click.ClickException(f"migration failed: {exc}") from None


@db.command("contract")
@click.option("--config", "config_path", default=None)
@_MIGRATIONS
def db_contract(config_path: str | None, migrations: str | None) -> None:
    """Apply every pending migration, contract steps included; refused (exit 1) while a live node
    runs code that does not know them (the previous release)."""
    config = _config(config_path)
    try:
        _migrate(config, _migrations(migrations), contract=True)
    except SystemExit:
        raise
    except Exception as exc:
        raise click.ClickException(f"migration failed: {exc}") from None


@main.command("bootstrap-cli")
@click.option("--account", default="admin", show_default=True, help="the account the key is for")
@click.option(
    "--password",
    envvar="RINGSTACK_ADMIN_PASSWORD",
    default="password",
    show_default=True,
    help="its password [env RINGSTACK_ADMIN_PASSWORD]",
)
def bootstrap_cli(account: str, password: str) -> None:
    """Give this machine's CLI an access key of ACCOUNT (the all-in-one's bootstrap; scripts/demo).

    Connects with the CLI's broker_url as it is (guest on the all-in-one: the one use of it), logs
    in, replaces ACCOUNT's key named "all-in-one-cli" (a rerun leaves one key and one broker user)
    and writes access_key_id/access_key_secret into ~/.config/ringstack/client.toml (mode 0600).
    Other users get their own key with `ringstack CreateAccessKey name=...` logged in as themselves."""
    from bus.errors import RingstackError
    from mgmt.cli.bootstrap import bootstrap

    try:
        done = bootstrap(account, password)
    except RingstackError as exc:
        raise click.ClickException(f"{exc.code}: {exc.message}") from None
    replaced = f" (replacing {', '.join(done.replaced)})" if done.replaced else ""
    click.echo(f"access key {done.key_id} of {account} written to {done.config_path}{replaced}")


@main.command("upgrade")
@_CONFIG
@click.option(
    "--timeout", type=float, default=120.0, show_default=True, help="seconds for each node's restart"
)
def upgrade_command(config_path: str | None, timeout: float) -> None:
    """A rolling upgrade to the code installed on the nodes' machines now (install it first, e.g.
    with the playbooks: ringstack-ctl install): the expand migrations, then every live node
    restarted one at a time (drain, hand over, start again on the new code; each must run under a
    supervisor: systemd or ringstack-ctl start --supervise), then the contract migrations."""
    from mgmt.cli.status import _recorded

    config = _config(config_path)
    location = _migrations(None)
    try:
        _migrate(config, location, contract=False)
    except Exception as exc:
        raise click.ClickException(f"migration failed: {exc}") from None
    alive = [r["uuid"] for r in _recorded(config)[0] if r["state"] == "alive"]
    for uuid in alive:
        _restart_node(config, uuid, timeout)
    _migrate(config, location, contract=True)
    click.echo(f"upgrade: {len(alive)} node(s) restarted one at a time")


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
