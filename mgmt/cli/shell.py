"""``ringstack shell`` (or ``ringstack`` alone on a terminal): zstack-cli's interactive mode.

Every command line of ``ringstack`` works here without the program name (``QueryZone name=z1
-f json``); Tab completes API names, fields and resource uuids (mgmt/cli/complete.py); history is
kept in ``$XDG_STATE_HOME/ringstack/history`` (1,000 lines) with passwords blanked out; the
options the shell was started with apply to every command. ``exit``, ``quit`` or Ctrl-D leave.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
from pathlib import Path
from typing import Any

import click

HISTORY_LENGTH = 1000
_SECRET = re.compile(r"((?:password|secret|accessKeySecret)\w*=)(\"[^\"]*\"|'[^']*'|\S*)", re.IGNORECASE)


def history_path() -> Path:
    return (
        Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "ringstack" / "history"
    )


def scrub(line: str) -> str:
    """The line as history keeps it: every password value blanked."""
    return _SECRET.sub(r"\1******", line)


def _options(opts: dict[str, Any]) -> list[str]:
    """The shell's own options, given again to every command it runs."""
    words: list[str] = []
    for name, flag in (
        ("broker_url", "--broker-url"),
        ("namespace", "--namespace"),
        ("session", "--session"),
        ("timeout", "--timeout"),
        ("fmt", "-f"),
        ("max_width", "--max-width"),
    ):
        if opts.get(name) not in (None, ()):
            words += [flag, str(opts[name])]
    return words


def completions(line: str, text: str) -> list[str]:
    """What Tab offers for ``text``, the last word of ``line`` (the part typed so far)."""
    from click.shell_completion import ShellComplete

    from mgmt.cli.client import cli

    words = shlex.split(line[: len(line) - len(text)]) if line.strip() else []
    complete = ShellComplete(cli, {}, "ringstack", "_RINGSTACK_COMPLETE")
    return [str(item.value) for item in complete.get_completions(words, text)]


def run_shell(opts: dict[str, Any]) -> None:
    import readline

    from mgmt.cli.client import run

    path = history_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):  # no history yet
        readline.read_history_file(path)
    readline.set_history_length(HISTORY_LENGTH)
    readline.set_auto_history(False)
    # '=' and ',' stay inside words so that field=value and a,b complete as one word.
    readline.set_completer_delims(" \t\n\"'")
    readline.parse_and_bind("tab: complete")
    found: list[str] = []

    def completer(text: str, state: int) -> str | None:
        if state == 0:
            try:
                found[:] = completions(readline.get_line_buffer()[: readline.get_endidx()], text)
            except Exception:  # a failing completion must not end the shell
                found[:] = []
        return found[state] if state < len(found) else None

    readline.set_completer(completer)
    prefix = _options(opts)
    click.echo(
        "ringstack shell: Tab completes, `help` lists APIs, `<ApiName> --help` shows one, Ctrl-D leaves"
    )
    try:
        while True:
            try:
                line = input("ringstack> ")
            except KeyboardInterrupt:
                click.echo("")
                continue
            except EOFError:
                click.echo("")
                break
            line = line.strip()
            if not line:
                continue
            readline.add_history(scrub(line))
            if line in ("exit", "quit"):
                break
            try:
                words = shlex.split(line)
            except ValueError as exc:
                click.echo(f"Error: {exc}", err=True)
                continue
            if words == ["help"]:
                words = ["--list"]
            code = run([*prefix, *words] if words[0] not in ("shell",) else ["--help"])
            if code:
                click.echo(f"(exit code {code})", err=True)
    finally:
        readline.write_history_file(path)
