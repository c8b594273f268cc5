"""The ``ringstack`` CLI against a real node process: generated from the API registry, every API is a
command whose help names its fields, every read command's ``-f json`` parses, every format and
``-c`` works; then the exit codes, progress and Ctrl-C -> CancelJob on a terminal, completion,
the event stream and the interactive shell."""

from __future__ import annotations

import asyncio
import csv
import io
import os
import pty
import select
import signal
import subprocess
import time
from pathlib import Path

import orjson
import pytest
import yaml
from click.testing import CliRunner

from mgmt.cli import client as cli_client
from schema.registry import load_all
from tests.support.procs import CLI, ROOT, NodeProcess, node_env, run_cli
from tests.support.zone import build_zone, vm_request

FORMATS = ("table", "json", "yaml", "value", "csv")


@pytest.fixture(scope="module")
def cache_home(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cli-cache"))


SERVICES = "tests.support.services:TestingService,tests.support.services:AuditService"


@pytest.fixture
def env(database_url, namespace, broker_url, cache_home, tmp_path):
    from sqlalchemy import create_engine, text

    from tests.support.services import AUDIT_DDL

    engine = create_engine(database_url)
    with engine.begin() as conn:
        conn.execute(text(AUDIT_DDL))  # AuditedWork: a cancellable job about one resource
    engine.dispose()
    return {
        **node_env(database_url, namespace, broker_url, extra_services=SERVICES),
        "XDG_CACHE_HOME": cache_home,
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "XDG_STATE_HOME": str(tmp_path / "state"),
    }


@pytest.fixture
def node_proc(env):
    proc = NodeProcess(env)
    try:
        yield proc.wait_ready()
    finally:
        proc.close()


@pytest.fixture
def invoke(env, monkeypatch):
    """Run one CLI command line in this process (no interpreter start-up), as a thread."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(cli_client, "_catalog", None)  # the catalogue of this test's settings

    def run(*args: str, session: str | None = None):
        runner = CliRunner()
        full = [*(["--session", session] if session else []), *args]
        return runner.invoke(
            cli_client.cli, full, prog_name="ringstack", standalone_mode=False, catch_exceptions=True
        )

    return run


def _code(result) -> int:
    """The exit code ``run()`` would return for a CliRunner result."""
    import click

    exc = result.exception
    if exc is None:
        return 0
    if isinstance(exc, cli_client.CliExit):
        return exc.code
    if isinstance(exc, click.UsageError):
        return 2
    if isinstance(exc, SystemExit):
        return int(exc.code or 0)
    raise exc


# ---------------------------------------------------------------------- generated from the registry


def test_every_api_is_a_command_with_help(env, monkeypatch):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(cli_client, "_catalog", None)
    import tests.support.services  # noqa: F401 - the plugin's messages, as the CLI loads them

    registry = load_all()
    served = sorted(
        n
        for n in registry.names()
        if registry.get(n).__module__.startswith(("schema.api.", "tests.support.services"))  # type: ignore[union-attr]
    )
    assert cli_client.catalog().names() == served
    runner = CliRunner()
    listed = runner.invoke(cli_client.cli, ["--list"], standalone_mode=False)
    assert listed.output.split() == served
    for name in served:
        result = runner.invoke(cli_client.cli, [name, "--help"], prog_name="ringstack", standalone_mode=False)
        assert result.exception is None, (name, result.output)
        assert f"ringstack {name}" in result.output and "Example:" in result.output
        message = registry.get(name)
        assert message is not None
        for attr, info in message.model_fields.items():
            if attr != "conditions":
                assert f"  {info.alias or attr} " in result.output, (name, attr, result.output)


async def test_every_read_command_every_format_and_column(
    node_proc, env, invoke, client, simulator, tmp_path
):
    z = await build_zone(client, tmp_path, hosts=1)
    vm = (await client.api("CreateVmInstance", vm_request(z, "cli-vm"), timeout=60))["inventory"]
    session = await client.admin_session()
    registry = load_all()
    # Values for the required fields of read APIs that are not queries.
    samples = {
        "l3NetworkUuid": z.l3,
        "uuid": vm["uuid"],
        "vmInstanceUuid": vm["uuid"],
        "sessionUuid": session,
        "ip": "10.20.0.77",
    }
    reads = [n for n in cli_client.catalog().names() if not registry.get(n).mutating]  # type: ignore[union-attr]
    assert len(reads) > 20
    with_rows: list[tuple[str, dict]] = []
    for name in reads:
        spec = cli_client.catalog().get(name)
        assert spec is not None
        words = [f"{f}={samples[f]}" for f, info in spec.fields.items() if info["required"]]
        result = await asyncio.to_thread(invoke, name, *words, "-f", "json", session=session)
        assert _code(result) == 0, (name, result.output)
        reply = orjson.loads(result.output)
        assert isinstance(reply, dict), name
        if spec.query:
            assert isinstance(reply["inventories"], list), name
            if reply["inventories"]:
                with_rows.append((name, reply["inventories"][0]))
    queried = {name for name, _ in with_rows}
    assert {
        "QueryZone",
        "QueryVmInstance",
        "QueryHost",
        "QueryL3Network",
        "QueryImage",
        "QueryJob",
    } <= queried

    for name, first in with_rows:
        columns = [c for c in ("uuid", "name") if c in first] or list(first)[:2]
        where = [f"uuid={first['uuid']}"] if "uuid" in first else []
        picked = [arg for c in columns for arg in ("-c", c)]
        for fmt in FORMATS:
            result = await asyncio.to_thread(invoke, name, *where, "-f", fmt, *picked, session=session)
            assert _code(result) == 0, (name, fmt, result.output)
            out = result.output
            values = [str(first[c]) for c in columns]
            if fmt == "json":
                rows = orjson.loads(out)["inventories"]
                assert all(set(r) == set(columns) for r in rows) and rows[0] == {c: first[c] for c in columns}
            elif fmt == "yaml":
                assert yaml.safe_load(out)["inventories"][0] == {c: first[c] for c in columns}
            elif fmt == "csv":
                parsed = list(csv.reader(io.StringIO(out)))
                assert parsed[0] == columns and values in parsed[1:]
            elif fmt == "value":
                assert " ".join(values) in out.splitlines()
            else:
                header = out.splitlines()[1]
                assert [h.strip() for h in header.strip("|").split("|")] == columns
                assert all(v in out for v in values)
        # A column the reply does not have is a usage error naming the ones it has.
        bad = await asyncio.to_thread(invoke, name, *where, "-c", "noSuchColumn", session=session)
        assert _code(bad) == 2 and "noSuchColumn" in str(bad.exception)

    # --max-width wraps the widest columns so that every line fits; no character is lost.
    wide = await asyncio.to_thread(invoke, "QueryZone", "--max-width", "90", session=session)
    assert _code(wide) == 0 and max(len(line) for line in wide.output.splitlines()) <= 90
    lines = wide.output.splitlines()
    first_column = "".join(line.split("|")[1].strip() for line in lines[3:] if line.startswith("|"))
    assert lines[1].split("|")[1].strip() == "uuid" and z.zone in first_column


# ---------------------------------------------------------------------- exit codes, the real program


def test_exit_codes(node_proc, env, tmp_path):
    from tests.support.identity import cli_login

    env = cli_login(env, tmp_path)
    ok = run_cli(["QueryZone", "-f", "value", "-c", "uuid"], env)
    assert ok.returncode == 0, ok.stderr
    missing = run_cli(["UpdateZone", f"uuid={'f' * 32}", "name=x"], env)
    assert missing.returncode == 1 and "SYS.NOT_FOUND" in missing.stderr
    unknown = run_cli(["CreateZon", "name=x"], env)
    assert unknown.returncode == 2 and "did you mean: CreateZone" in unknown.stderr
    field = run_cli(["CreateZone", "nmae=x"], env)
    assert field.returncode == 2 and "did you mean: name" in field.stderr
    help_ = run_cli(["CreateZone", "--help"], env)
    assert help_.returncode == 0 and "name" in help_.stdout and "required" in help_.stdout
    unreachable = run_cli(["QueryZone"], {**env, "RINGSTACK_BROKER_URL": "amqp://guest:guest@127.0.0.1:1/"})
    assert unreachable.returncode == 3 and "SYS.UNAVAILABLE" in unreachable.stderr
    assert "guest:***@" in unreachable.stderr
    started = time.monotonic()
    late = run_cli(["TestSleep", "seconds=30", "--timeout", "1.5"], env)
    assert late.returncode == 4 and "SYS.TIMEOUT" in late.stderr
    assert time.monotonic() - started < 20  # never hangs past its deadline (start-up included)


# ---------------------------------------------------------------------- a terminal: progress, Ctrl-C


class Terminal:
    """The CLI on a pseudo-terminal, as a person runs it."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen(
            [*CLI, *args],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), "TERM": "xterm", **env},
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=True,
        )
        os.close(slave)
        self.seen = b""

    def expect(self, text: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while text.encode() not in self.seen:
            left = deadline - time.monotonic()
            if left <= 0 or (self.proc.poll() is not None and not select.select([self.master], [], [], 0)[0]):
                raise AssertionError(f"no {text!r} in:\n{self.seen.decode(errors='replace')}")
            if select.select([self.master], [], [], min(left, 0.5))[0]:
                try:
                    self.seen += os.read(self.master, 65536)
                except OSError:
                    break
        return self.seen.decode(errors="replace")

    def send(self, text: str) -> None:
        os.write(self.master, text.encode())

    def close(self) -> int:
        try:
            return self.proc.wait(30)
        finally:
            os.close(self.master)


def test_progress_on_a_terminal_and_ctrl_c_offers_cancel_job(node_proc, env, tmp_path):
    from tests.support.identity import cli_login

    env = cli_login(env, tmp_path)
    term = Terminal(["AuditedWork", f"uuid={'a' * 32}", "seconds=45", "--timeout", "60"], env)
    try:
        shown = term.expect(": running")  # the job's own event, shown as it happens
        assert "Ctrl-C to cancel" in shown and "s left" in shown
        job = shown.split("AuditedWork job ", 1)[1][:8]
        os.killpg(term.proc.pid, signal.SIGINT)  # what Ctrl-C does
        term.expect("cancel it (CancelJob)?")
        term.send("y\n")
        out = term.expect(": cancelled")  # a running job: cancelling, then its end event
        assert term.close() == 130
    finally:
        if term.proc.poll() is None:
            term.proc.kill()
    assert "goes on as job " + job in out
    jobs = run_cli(["QueryJob", "name=AuditedWork", "-f", "json"], env)
    states = [j["state"] for j in orjson.loads(jobs.stdout)["inventories"] if j["uuid"].startswith(job)]
    assert states == ["cancelled"], jobs.stdout


# ---------------------------------------------------------------------- completion, events, shell


def test_completion_of_api_names_fields_and_uuids(node_proc, env, tmp_path):
    from tests.support.identity import cli_login

    env = cli_login(env, tmp_path)
    zone = orjson.loads(run_cli(["CreateZone", "name=complete-me", "-f", "json"], env).stdout)["inventory"]

    def complete(line: str) -> list[str]:
        result = subprocess.run(
            [*CLI],
            cwd=ROOT,
            env={
                **os.environ,
                "PYTHONPATH": str(ROOT),
                **env,
                "_RINGSTACK_COMPLETE": "bash_complete",
                "COMP_LINE": line,
                "COMP_POINT": str(len(line)),
                "COMP_WORDBREAKS": " \t\n\"'><=;|&(:",
            },
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        return result.stdout.split()

    assert "plain,CreateZone" in complete("ringstack CreateZ")
    assert complete("ringstack CreateZone na") == ["nospace,name="]
    # bash completes what follows '=': the uuid alone, with the zone's name as help elsewhere
    assert f"plain,{zone['uuid']}" in complete("ringstack CreateCluster zoneUuid=")
    assert complete(f"ringstack UpdateZone uuid={zone['uuid'][:6]}") == [f"plain,{zone['uuid']}"]
    assert "plain,Enabled" not in complete("ringstack ChangeZoneState stateEvent=")
    assert "plain,enable" in complete("ringstack ChangeZoneState stateEvent=")
    script = run_cli(["completion", "bash"], env)
    assert script.returncode == 0 and "_RINGSTACK_COMPLETE=bash_complete" in script.stdout


async def test_events_follows_the_stream_with_filters(node_proc, env, client, tmp_path):
    from tests.support.identity import cli_login

    env = cli_login(env, tmp_path)
    follower = subprocess.Popen(  # noqa: ASYNC220 - started once, read in a thread
        [
            *CLI,
            "events",
            "--kind",
            "zone",
            "--action",
            "created",
            "--count",
            "2",
            "--for",
            "60",
            "-f",
            "json",
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # The follower binds its queue some time after it starts: create zones until it has two.
        for i in range(40):
            await client.api("CreateZone", {"name": f"e{i}"})
            if follower.poll() is not None:
                break
            await asyncio.sleep(0.25)
        out, err = await asyncio.to_thread(follower.communicate, timeout=60)
    finally:
        if follower.poll() is None:
            follower.kill()
    assert follower.returncode == 0, err
    lines = [orjson.loads(line) for line in out.splitlines()]
    assert len(lines) == 2
    for line in lines:
        assert line["name"] == "zone.created" and line["key"].startswith("zone.")
        assert line["body"]["resourceType"] == "zone" and line["body"]["inventory"]["name"].startswith("e")
    # No event at all within --for with --count: exit 4 (timeout), for scripts.
    quiet = run_cli(["events", "--kind", "nothing", "--count", "1", "--for", "0.5"], env)
    assert quiet.returncode == 4


def test_interactive_shell_with_completion_and_history(node_proc, env, tmp_path):
    from tests.support.identity import cli_login

    env = cli_login(env, tmp_path)
    term = Terminal(["shell"], env)
    try:
        term.expect("ringstack> ")
        term.send("CreateZone name=from-shell -f value -c name\r")
        assert "from-shell" in term.expect("from-shell\r\n")
        term.expect("ringstack> ")
        term.send("QueryZ\t")  # Tab completes the API name
        term.expect("QueryZone")
        term.send(" -f value -c name\r")
        term.expect("from-shell")
        term.send("LogInByAccount accountName=admin password=wrong\r")
        term.expect("IDENTITY.AUTHENTICATION_FAILED")
        term.send("exit\r")
        assert term.close() == 0
    finally:
        if term.proc.poll() is None:
            term.proc.kill()
    history = (Path(env["XDG_STATE_HOME"]) / "ringstack" / "history").read_text()
    assert "CreateZone name=from-shell" in history and "QueryZone -f value -c name" in history
    assert "password=******" in history and "wrong" not in history
