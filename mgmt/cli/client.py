"""``ringstack``: every API as a command, generated from the API catalogue (zstack-cli's form).

    ringstack CreateZone name=z1
    ringstack QueryZone name~=z% -f json -c uuid -c name
    ringstack CreateZone --help            # the API's fields: type, required, default, meaning
    ringstack events --kind vm             # follow the canonical event stream
    ringstack shell                        # interactive, with history and completion
    ringstack completion bash              # the shell completion script

Exit codes (EXIT_CODES): 0 success; 1 the API answered with an error (its code is printed); 2 usage
error; 3 the cluster cannot be reached (broker down, connection lost); 4 no answer before the
deadline (``--timeout``); 130 interrupted (Ctrl-C; a running job is offered ``CancelJob``).
Settings: flag > ``RINGSTACK_*`` environment > ``~/.config/ringstack/client.toml`` (mgmt/cli/connect.py);
the broker credential is an access key (``access_key_id``/``access_key_secret``; ``ringstack-ctl
bootstrap-cli`` writes the all-in-one admin's, mgmt/cli/bootstrap.py).

Start-up is kept short (a cold ``ringstack QueryZone`` well under 300 ms): nothing imports pydantic
or the API modules except the catalogue's rebuild (mgmt/cli/catalog.py); heavy modules are
imported where they are used.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any, NoReturn

import click

from bus.errors import RingstackError, Sys
from mgmt.cli.args import UsageError, did_you_mean, parse_body
from mgmt.cli.catalog import ApiSpec, Catalog, load_catalog
from mgmt.cli.connect import SettingsError, Target, forget_session, setting, store_session
from mgmt.cli.output import FORMATS, ColumnError, render

OK, API_ERROR, USAGE, UNREACHABLE, TIMEOUT, INTERRUPTED = 0, 1, 2, 3, 4, 130
EXIT_CODES = {
    OK: "success",
    API_ERROR: "the API answered with an error (its code is printed)",
    USAGE: "usage error (unknown API or field, bad value, bad option)",
    UNREACHABLE: "the cluster cannot be reached (broker down or connection lost)",
    TIMEOUT: "no answer before the deadline (--timeout)",
    INTERRUPTED: "interrupted (Ctrl-C)",
}
LOGIN_APIS = ("LogInByAccount", "LogInByLdap")
BUILTINS = ("events", "shell", "completion")

_catalog: Catalog | None = None


def catalog() -> Catalog:
    global _catalog
    if _catalog is None:
        _catalog = load_catalog(setting("extra_services"))
    return _catalog


class CliExit(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def print_error(err: RingstackError) -> None:
    click.echo(f"Error {err.code}: {err.message}", err=True)
    cause = err.cause
    while cause is not None:
        click.echo(f"  caused by {cause.code}: {cause.message}", err=True)
        cause = cause.cause


def local_failure(err: RingstackError) -> NoReturn:
    """An error raised by this process (no reply from the cluster): exit 3 or 4."""
    print_error(err)
    raise CliExit(TIMEOUT if err.code == Sys.TIMEOUT else UNREACHABLE)


# ---------------------------------------------------------------------- options every command takes

_OPTIONS: list[Callable[[Any], Any]] = [
    click.option("--broker-url", default=None, help="AMQP URL of the broker [env RINGSTACK_BROKER_URL]"),
    click.option("--namespace", default=None, help="topology namespace [env RINGSTACK_NAMESPACE]"),
    click.option("--session", default=None, help="session uuid [env RINGSTACK_SESSION]"),
    click.option("--timeout", default=None, type=float, help="seconds to wait for the answer [default 60]"),
    click.option(
        "-f", "--format", "fmt", type=click.Choice(FORMATS), default=None, help="output format [table]"
    ),
    click.option("-c", "--column", "columns", multiple=True, help="show this field (repeatable)"),
    click.option(
        "--max-width",
        type=click.IntRange(min=0),
        default=None,
        help="wrap tables to this width; 0: never [the terminal's width, env RINGSTACK_MAX_WIDTH]",
    ),
]
_OPTION_NAMES = ("broker_url", "namespace", "session", "timeout", "fmt", "columns", "max_width")


def common_options(f: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(_OPTIONS):
        f = option(f)
    return f


def merged(ctx: click.Context, given: dict[str, Any]) -> dict[str, Any]:
    """A subcommand's options over the group's: ``ringstack -f json QueryZone`` and
    ``ringstack QueryZone -f json`` mean the same."""
    outer: dict[str, Any] = (ctx.find_root().params or {}) if ctx.parent else {}
    out = {}
    for name in _OPTION_NAMES:
        value = given.get(name)
        out[name] = value if value not in (None, ()) else outer.get(name)
    return out


def target_of(opts: dict[str, Any]) -> Target:
    try:
        return Target.resolve(opts["broker_url"], opts["namespace"], opts["session"], opts["timeout"])
    except SettingsError as exc:
        raise click.UsageError(str(exc)) from None


def max_width_of(opts: dict[str, Any]) -> int:
    if opts["max_width"] is not None:
        return int(opts["max_width"])
    env = os.environ.get("RINGSTACK_MAX_WIDTH")
    if env and env.isdigit():
        return int(env)
    if sys.stdout.isatty():
        import shutil

        return shutil.get_terminal_size().columns
    return 0


def emit(data: dict[str, Any], opts: dict[str, Any]) -> None:
    try:
        click.echo(render(data, opts["fmt"] or "table", tuple(opts["columns"] or ()), max_width_of(opts)))
    except ColumnError as exc:
        raise click.UsageError(str(exc)) from None


# ---------------------------------------------------------------------- calling an API


def call_api(spec: ApiSpec, body: dict[str, Any], target: Target) -> dict[str, Any]:
    """Send the request; show progress of a mutating one on a terminal; Ctrl-C offers CancelJob."""
    from bus.envelope import Envelope

    env = Envelope(
        name=spec.name, kind="api", body=body, session=target.session, deadline=time.time() + target.timeout
    )
    progress = None
    if spec.mutating and sys.stderr.isatty():
        from mgmt.cli.progress import Progress

        resource = body.get(spec.resource_field) if spec.resource_field else None
        progress = Progress(target, env, resource if isinstance(resource, str) else None)
    try:
        with target.client() as client:
            if progress is not None:
                progress.start()
            try:
                reply = client.call_envelope(target.topology.api_queue.name, env, persistent=True)
            finally:
                if progress is not None:
                    progress.stop()
    except RingstackError as err:
        local_failure(err)
    except KeyboardInterrupt:
        interrupted(spec, env.id, target)
    return reply.raise_for_error()


def interrupted(spec: ApiSpec, job_uuid: str, target: Target) -> NoReturn:
    click.echo("", err=True)
    if not spec.mutating:
        raise CliExit(INTERRUPTED)
    click.echo(f"interrupted: {spec.name} goes on as job {job_uuid}", err=True)
    if sys.stdin.isatty() and click.confirm("cancel it (CancelJob)?", default=False, err=True):
        try:
            # Bound before asking, so the job's end (a running job rolls back first) is not missed.
            with target.events(f"job.{job_uuid}.*") as ends, target.client("ringstack-cli-cancel") as client:
                answer = client.api("CancelJob", {"uuid": job_uuid}, session=target.session, timeout=30)
                state = answer["state"]
                click.echo(f"job {job_uuid}: {state}", err=True)
                deadline = time.monotonic() + target.timeout
                while state == "cancelling" and time.monotonic() < deadline:
                    got = ends.next(min(1.0, deadline - time.monotonic()))
                    if got is not None and got[0].rsplit(".", 1)[-1] in ("succeeded", "failed", "cancelled"):
                        state = got[0].rsplit(".", 1)[-1]
                        click.echo(f"job {job_uuid}: {state}", err=True)
        except RingstackError as err:
            print_error(err)
    else:
        click.echo(f"to cancel it: ringstack CancelJob uuid={job_uuid}", err=True)
    raise CliExit(INTERRUPTED)


def run_api(spec: ApiSpec, words: list[str], opts: dict[str, Any]) -> None:
    try:
        body = parse_body(spec, words)
    except UsageError as exc:
        raise click.UsageError(str(exc)) from None
    target = target_of(opts)
    if spec.name == "LogOut" and "sessionUuid" not in body and target.session:
        body["sessionUuid"] = target.session  # `ringstack LogOut` ends the current session
    try:
        reply = call_api(spec, body, target)
    except RingstackError as err:
        print_error(err)
        raise CliExit(API_ERROR) from None
    if spec.name in LOGIN_APIS:
        store_session(reply["inventory"]["uuid"])
    elif spec.name == "LogOut":
        forget_session(body["sessionUuid"])
    emit(reply, opts)


# ---------------------------------------------------------------------- one command per API


def api_help(spec: ApiSpec) -> str:
    lines = [f"Usage: ringstack {spec.name} [OPTIONS] [FIELD=VALUE]...", ""]
    if spec.doc:
        lines += [f"  {spec.doc}", ""]
    kind = "query" if spec.query else ("changes state (runs as a job)" if spec.mutating else "read-only")
    lines += [f"  Service: {spec.service}; {kind}.", "", "Fields:"]
    shown = {n: f for n, f in spec.fields.items() if not (spec.query and n == "conditions")}
    width = max((len(n) for n in shown), default=0) + 2
    for name, field in shown.items():
        flags = (
            "required"
            if field["required"]
            else f"default {_plain(field['default'])}"
            if "default" in field
            else "optional"
        )
        lines.append(f"  {name:<{width}}{field['type']}; {flags}")
        if field["meaning"]:
            lines.append(f"  {'':<{width}}{field['meaning']}")
    if spec.query:
        lines += [
            "",
            "Conditions (ANDed): field=value, != > < >= <=, ?= (in: a,b), !?=, ~= (like: a%), !~=,",
            "  field=null, field!=null; dotted names reach related resources (zone.name=east).",
        ]
    lines += ["", "Example:", f"  {example(spec)}", "", "Options:"]
    for option in _OPTIONS:
        param = option(lambda: None).__click_params__[0]
        lines.append(f"  {', '.join(param.opts):24} {param.help}")
    lines.append("  -h, --help               this text")
    return "\n".join(lines)


def _plain(value: Any) -> str:
    """A default as it would be typed: true, not True."""
    import orjson

    return value if isinstance(value, str) else orjson.dumps(value).decode()


def example(spec: ApiSpec) -> str:
    if spec.query:
        return f"ringstack {spec.name} name~=web-% limit=10 -f json -c uuid -c name"
    words = []
    for name, field in spec.fields.items():
        if field["required"]:
            sample = "<uuid>" if "uuid" in field["type"] else "a,b" if field["list"] else f"<{name}>"
            words.append(f"{name}={sample}")
    return " ".join([f"ringstack {spec.name}", *words])


class ApiCommand(click.Command):
    def __init__(self, spec: ApiSpec) -> None:
        self.spec = spec
        from mgmt.cli.complete import complete_words

        super().__init__(
            spec.name,
            callback=self._run,
            params=[
                click.Argument(["words"], nargs=-1, type=click.UNPROCESSED, shell_complete=complete_words)
            ],
            context_settings={"ignore_unknown_options": True, "help_option_names": ["-h", "--help"]},
            short_help=spec.doc[:80],
        )
        for option in _OPTIONS:
            self.params.extend(option(lambda: None).__click_params__)

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        formatter.write(api_help(self.spec) + "\n")

    def _run(self, words: tuple[str, ...], **given: Any) -> None:
        run_api(self.spec, list(words), merged(click.get_current_context(), given))


class Ringstack(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return [*BUILTINS, *catalog().names()]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.commands:
            return self.commands[cmd_name]
        spec = catalog().get(cmd_name)
        return ApiCommand(spec) if spec is not None else None

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        name = args[0]
        command = self.get_command(ctx, name)
        if command is None and not ctx.resilient_parsing:
            raise click.UsageError(
                f"unknown API {name!r}{did_you_mean(name, catalog().names())}; `ringstack --list` lists them"
            )
        return name, command, args[1:]


@click.group(
    cls=Ringstack,
    invoke_without_command=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="APIs: `ringstack --list`; one API's fields: `ringstack <ApiName> --help`. Broker credential: "
    "an access key, access_key_id and access_key_secret in ~/.config/ringstack/client.toml (mode 0600) "
    "or env RINGSTACK_ACCESS_KEY_ID/RINGSTACK_ACCESS_KEY_SECRET; make your own with "
    "`ringstack CreateAccessKey name=...` logged in as your account (scripts/demo gives the admin "
    "one: `ringstack-ctl bootstrap-cli`); without one, broker_url's user (guest: the all-in-one's "
    "local bootstrap only). Exit codes: "
    + "; ".join(f"{code} {meaning}" for code, meaning in EXIT_CODES.items()),
)
@common_options
@click.option("--list", "list_apis", is_flag=True, help="list every API and exit")
@click.pass_context
def cli(ctx: click.Context, list_apis: bool, **_: Any) -> None:
    """Call a ringstack API: ringstack <ApiName> key=value ..."""
    if list_apis:
        click.echo("\n".join(catalog().names()))
        ctx.exit(0)
    if ctx.invoked_subcommand is None:
        if sys.stdin.isatty() and sys.stdout.isatty():
            from mgmt.cli.shell import run_shell

            run_shell(merged(ctx, {}))
            return
        raise click.UsageError("name an API, e.g. `ringstack QueryZone`; `ringstack --list` lists them")


@cli.command("events")
@common_options
@click.option("--kind", "kinds", multiple=True, help="resource kind: zone, vm, host, job, ... (repeatable)")
@click.option("--uuid", "uuids", multiple=True, help="resource uuid (repeatable)")
@click.option("--action", "actions", multiple=True, help="created, updated, deleted, state, ... (repeatable)")
@click.option("--count", type=click.IntRange(min=1), default=None, help="exit after this many events")
@click.option(
    "--for", "duration", type=click.FloatRange(min=0), default=None, help="exit after this many seconds"
)
def events_command(
    kinds: tuple[str, ...],
    uuids: tuple[str, ...],
    actions: tuple[str, ...],
    count: int | None,
    duration: float | None,
    **given: Any,
) -> None:
    """Follow the canonical event stream (one line per event; -f json: one JSON object per line).

    Events are ``<kind>.<uuid>.<action>`` on the events exchange; their bodies are documented in
    `ringstack-ctl schema export` ("events"). With --count, exit 4 if fewer came within --for."""
    from mgmt.cli.events import follow

    opts = merged(click.get_current_context(), given)
    try:
        got = follow(target_of(opts), kinds, uuids, actions, count, duration, opts["fmt"] or "table")
    except RingstackError as err:
        local_failure(err)
    if count is not None and got < count:
        raise CliExit(TIMEOUT)


@cli.command("shell")
@common_options
def shell_command(**given: Any) -> None:
    """An interactive shell: every API with completion, history in ~/.local/state/ringstack."""
    from mgmt.cli.shell import run_shell

    run_shell(merged(click.get_current_context(), given))


@cli.command("completion")
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion_command(shell: str) -> None:
    """Print the completion script: eval "$(ringstack completion bash)" (API names, fields, uuids)."""
    from mgmt.cli.complete import script

    click.echo(script(cli, shell))


def run(args: list[str] | None = None, standalone: bool = True) -> int:
    """Run one command line; the exit code (EXIT_CODES)."""
    try:
        cli.main(args=args, prog_name="ringstack", standalone_mode=False)
    except CliExit as exc:
        return exc.code
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        return USAGE if isinstance(exc, click.UsageError) else exc.exit_code
    except click.exceptions.Abort:
        click.echo("", err=True)
        return INTERRUPTED
    except KeyboardInterrupt:
        click.echo("", err=True)
        return INTERRUPTED
    except SettingsError as exc:
        click.echo(f"Error: {exc}", err=True)
        return USAGE
    return OK


def main() -> None:
    """The ``ringstack`` console script."""
    # Shell completion goes through click's protocol (_RINGSTACK_COMPLETE) before anything else.
    if "_RINGSTACK_COMPLETE" in os.environ:
        from mgmt.cli.complete import install_bash

        install_bash()
        cli(prog_name="ringstack")
    sys.exit(run())


if __name__ == "__main__":
    main()
