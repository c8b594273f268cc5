"""``ringstack``: every API as a command, generated from the message registry.

    ringstack CreateZone name=z1
    ringstack QueryZone name=z1 -f json

Exit codes: 0 success; 1 the API answered with an error (its code is printed); 2 usage error.
Settings: flag > ``RINGSTACK_*`` environment > ``~/.config/ringstack/client.toml``.
"""

from __future__ import annotations

import os
import sys
import tomllib
from pathlib import Path
from typing import Any

import click

from bus.errors import RingstackError
from bus.sync import SyncClient
from bus.topology import Topology
from mgmt.cli.args import UsageError, parse_body
from mgmt.cli.output import FORMATS, render
from schema.registry import load_all

CONFIG_PATH = Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config")) / "ringstack" / "client.toml"
# Written by a successful login (LOGIN_APIS), removed by LogOut; used when no --session or
# RINGSTACK_SESSION is given (as zstack-cli keeps its session in ~/.zstack/cli).
SESSION_PATH = CONFIG_PATH.parent / "session"
LOGIN_APIS = ("LogInByAccount", "LogInByLdap")
DEFAULTS = {"broker_url": "amqp://guest:guest@127.0.0.1:5672/", "namespace": "ringstack", "timeout": "60"}


def client_setting(name: str, flag: str | None) -> str:
    if flag is not None:
        return flag
    env = os.environ.get(f"RINGSTACK_{name.upper()}")
    if env:
        return env
    if CONFIG_PATH.exists():
        try:
            value = tomllib.loads(CONFIG_PATH.read_text()).get(name)
        except tomllib.TOMLDecodeError as exc:
            raise click.UsageError(f"{CONFIG_PATH} is not valid TOML: {exc}") from None
        if value is not None:
            return str(value)
    return DEFAULTS.get(name, "")


def stored_session() -> str | None:
    try:
        return SESSION_PATH.read_text(encoding="ascii").strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def store_session(session: str) -> None:
    """Write the session file readable by its owner only (it is a bearer credential)."""
    SESSION_PATH.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = SESSION_PATH.with_name(f".session.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(session + "\n")
    os.chmod(tmp, 0o600)  # in case it already existed with a wider mode
    os.replace(tmp, SESSION_PATH)


def forget_session(session: str) -> None:
    """Remove the session file if it holds ``session`` (logging out another session keeps it)."""
    if stored_session() == session:
        SESSION_PATH.unlink(missing_ok=True)


def _print_error(err: RingstackError) -> None:
    click.echo(f"Error {err.code}: {err.message}", err=True)
    cause = err.cause
    while cause is not None:
        click.echo(f"  caused by {cause.code}: {cause.message}", err=True)
        cause = cause.cause


def _api_list() -> str:
    return "\n".join(load_all().names())


@click.command(
    context_settings={"ignore_unknown_options": True, "help_option_names": ["-h", "--help"]},
    epilog="APIs: run `ringstack --list`.",
)
@click.option("--broker-url", default=None, help="AMQP URL of the broker [env RINGSTACK_BROKER_URL]")
@click.option("--namespace", default=None, help="topology namespace [env RINGSTACK_NAMESPACE]")
@click.option("--session", default=None, help="session uuid [env RINGSTACK_SESSION]")
@click.option("--timeout", default=None, type=float, help="seconds to wait for the reply")
@click.option("-f", "--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True)
@click.option("--list", "list_apis", is_flag=True, help="list every API and exit")
@click.argument("api", required=False)
@click.argument("params", nargs=-1, type=click.UNPROCESSED)
def main(
    broker_url: str | None,
    namespace: str | None,
    session: str | None,
    timeout: float | None,
    fmt: str,
    list_apis: bool,
    api: str | None,
    params: tuple[str, ...],
) -> None:
    """Call a ringstack API: ringstack <ApiName> key=value ..."""
    registry = load_all()
    if list_apis:
        click.echo(_api_list())
        return
    if api is None:
        raise click.UsageError("name an API, e.g. `ringstack QueryZone`; `ringstack --list` lists them")
    message = registry.get(api)
    if message is None or message.internal:
        raise click.UsageError(f"unknown API {api!r}; `ringstack --list` lists them")
    try:
        body = parse_body(message, list(params))
    except UsageError as exc:
        raise click.UsageError(str(exc)) from None
    try:
        wait = float(timeout if timeout is not None else client_setting("timeout", None))
    except ValueError:
        raise click.UsageError("timeout must be a number of seconds") from None
    topology = Topology(client_setting("namespace", namespace))
    chosen = (
        session or os.environ.get("RINGSTACK_SESSION") or stored_session() or client_setting("session", None)
    )
    if api == "LogOut" and "sessionUuid" not in body and chosen:
        body["sessionUuid"] = chosen  # `ringstack LogOut` ends the current session
    try:
        with SyncClient(client_setting("broker_url", broker_url), topology) as client:
            reply: dict[str, Any] = client.api(api, body, session=chosen or None, timeout=wait)
    except RingstackError as err:
        _print_error(err)
        sys.exit(1)
    if api in LOGIN_APIS:
        store_session(reply["inventory"]["uuid"])
    elif api == "LogOut":
        forget_session(body["sessionUuid"])
    click.echo(render(reply, fmt))


if __name__ == "__main__":
    main()
