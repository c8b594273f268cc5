"""``ringstack events``: follow the canonical event stream, for people (one line each) and
scripts (``-f json``: one JSON object per line, flushed as it comes).

Every event is an envelope on the ``<ns>.events`` topic exchange with the routing key
``<kind>.<uuid>.<action>``, the name ``<kind>.<action>`` and a body of ``resourceUuid``,
``resourceType``, ``action`` and, for most actions, ``inventory`` (the resource as queries show it):
the JSON Schema is under "events" in `ringstack-ctl schema export`. Agents' reports
(``agent.<host>.<report>``) share the exchange but are not resource events: shown only with
``--kind agent``.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import click
import orjson

from mgmt.cli.connect import Target


def patterns(kinds: tuple[str, ...], uuids: tuple[str, ...], actions: tuple[str, ...]) -> list[str]:
    return [f"{k}.{u}.{a}" for k in kinds or ("*",) for u in uuids or ("*",) for a in actions or ("*",)]


def follow(
    target: Target,
    kinds: tuple[str, ...],
    uuids: tuple[str, ...],
    actions: tuple[str, ...],
    count: int | None,
    duration: float | None,
    fmt: str,
) -> int:
    """Print events until ``count`` came or ``duration`` passed (or forever); how many came."""
    end = None if duration is None else time.monotonic() + duration
    got = 0
    with target.events(*patterns(kinds, uuids, actions)) as stream:
        if fmt != "json":
            click.echo(
                f"following events {' '.join(patterns(kinds, uuids, actions))} (Ctrl-C ends)", err=True
            )
        while count is None or got < count:
            wait = 1.0 if end is None else end - time.monotonic()
            if wait <= 0:
                break
            item = stream.next(min(wait, 1.0))
            if item is None:
                continue
            key, env = item
            if key.startswith("agent.") and "agent" not in kinds:
                continue
            got += 1
            click.echo(line(key, env, fmt))
    return got


def line(key: str, env: dict[str, Any], fmt: str) -> str:
    body = env.get("body") or {}
    if fmt in ("json", "yaml"):
        return orjson.dumps({"key": key, "name": env.get("name"), "id": env.get("id"), "body": body}).decode()
    kind, uuid, action = ([*key.split(".", 2), "", ""])[:3]
    at = datetime.now(UTC).strftime("%H:%M:%S.%f")[:-3]
    inv = body.get("inventory") if isinstance(body, dict) else None
    detail = ""
    if isinstance(inv, dict):
        detail = " ".join(f"{k}={inv[k]}" for k in ("name", "state", "status") if inv.get(k) is not None)
    return f"{at} {kind:<14} {uuid} {action:<10} {detail}".rstrip()
