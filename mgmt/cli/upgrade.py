"""Upgrades without downtime: migrations in two phases, and the check between them.

A migration is an **expand** step (the default: additive, safe while nodes of the previous release
run: new tables, nullable columns, indexes) or a **contract** step (its module says
``phase = "contract"``: drops and renames that the previous release's code would trip over). A
rolling upgrade applies the expand steps, restarts the nodes one at a time on the new code, and
only then the contract steps: ``contract`` is refused while any live node runs code that does not
know the newest migration (its ``ops.Status`` reply's ``schemaHead``, the head of the migrations
its code ships; a node too old to report one counts as old).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import Script, ScriptDirectory

from mgmt.config import NodeConfig
from mgmt.core.migrate import MIGRATIONS, current

CONTRACT = "contract"


def _config(database_url: str, location: Path) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(location))
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return cfg


@functools.cache
def known_head(location: Path = MIGRATIONS) -> str | None:
    """The newest migration this code ships (what a node reports as ``schemaHead``)."""
    return ScriptDirectory(str(location)).get_current_head()


def phase(script: Script) -> str:
    return str(getattr(script.module, "phase", "expand"))


@dataclass
class Plan:
    current: str | None
    expand: list[str] = field(default_factory=list)  # in the order they apply
    contract: list[str] = field(default_factory=list)  # everything from the first contract step on


def plan(database_url: str, location: Path = MIGRATIONS) -> Plan:
    scripts = ScriptDirectory(str(location))
    now = current(database_url)
    pending = list(reversed(list(scripts.iterate_revisions("heads", now or "base"))))
    result = Plan(now)
    for script in pending:
        if result.contract or phase(script) == CONTRACT:
            result.contract.append(script.revision)
        else:
            result.expand.append(script.revision)
    return result


def old_nodes(config: NodeConfig, location: Path = MIGRATIONS, timeout: float = 3.0) -> list[str]:
    """Live nodes whose code does not know this tree's newest migration (or that did not answer),
    one line each; raises when the database or the broker cannot be reached."""
    from bus.errors import RingstackError
    from mgmt.cli.status import _client, _recorded
    from mgmt.ops import OPS_STATUS

    head = known_head(location)
    recorded, _, _ = _recorded(config)
    found: list[str] = []
    with _client(config) as client:
        for row in recorded:
            if row["state"] != "alive":
                continue
            try:
                reply = client.call(
                    client.topology.node_queue(row["uuid"]).name, OPS_STATUS, {}, timeout=timeout
                )
            except RingstackError as exc:
                found.append(f"node {row['uuid']} did not answer ({exc.code})")
                continue
            theirs = reply.get("schemaHead")
            if theirs != head:
                found.append(
                    f"node {row['uuid']} runs code whose newest migration is {theirs or 'unknown'}, not {head}"
                )
    return found


def expand(database_url: str, steps: Plan, location: Path = MIGRATIONS) -> None:
    if steps.expand:
        command.upgrade(_config(database_url, location), steps.expand[-1])


def contract(database_url: str, location: Path = MIGRATIONS) -> None:
    command.upgrade(_config(database_url, location), "heads")
