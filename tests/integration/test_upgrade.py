"""Upgrades: migrations expand, then contract (refused while a node runs code that does not know
the contract step), and `ringstack-ctl upgrade` restarting supervised nodes one at a time under
calls that must all be answered."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

from sqlalchemy import create_engine, inspect

from mgmt.cli.supervise import read_state
from mgmt.cli.upgrade import known_head
from mgmt.core.migrate import MIGRATIONS, current
from tests.integration.test_ops import ctl, env, node_uuid  # noqa: F401  (env is a fixture)
from tests.support.procs import NodeProcess

STEP = '''"""{doc}"""
import sqlalchemy as sa
from alembic import op

revision = "{revision}"
down_revision = "{down}"
branch_labels = None
depends_on = None
{phase}

def upgrade() -> None:
    {body}
'''


def migrations_with_a_contract_step(into: Path) -> Path:
    """This tree's migrations and two more: an expand step adding a column, a contract step
    dropping it (as a rename or a removal would end)."""
    shutil.copytree(MIGRATIONS, into, ignore=shutil.ignore_patterns("__pycache__"))
    versions = into / "versions"
    (versions / "0098_probe.py").write_text(
        STEP.format(
            doc="expand: zone.upgrade_probe",
            revision="0098",
            down=known_head(),
            phase="",
            body='op.add_column("zone", sa.Column("upgrade_probe", sa.Text(), nullable=True))',
        )
    )
    (versions / "0099_probe.py").write_text(
        STEP.format(
            doc="contract: drop zone.upgrade_probe",
            revision="0099",
            down="0098",
            phase='phase = "contract"',
            body='op.drop_column("zone", "upgrade_probe")',
        )
    )
    return into


def zone_columns(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return {c["name"] for c in inspect(engine).get_columns("zone")}
    finally:
        engine.dispose()


def test_contract_waits_for_every_node_to_know_it(env, database_url, tmp_path):  # noqa: F811
    location = str(migrations_with_a_contract_step(tmp_path / "migrations"))
    node = NodeProcess(env, "previous").wait_ready(60)  # its code knows only this tree's head
    try:
        uuid = node_uuid(node)
        expanded = ctl(["db", "upgrade", "--migrations", location], env)
        assert expanded.returncode == 0, expanded.stderr
        assert "to 0098 (expand)" in expanded.stdout and "contract step(s) 0099 wait" in expanded.stdout
        assert f"node {uuid} runs code whose newest migration is {known_head()}" in expanded.stdout
        assert current(database_url) == "0098" and "upgrade_probe" in zone_columns(database_url)
        refused = ctl(["db", "contract", "--migrations", location], env)
        assert refused.returncode == 1 and uuid in refused.stderr, (refused.stdout, refused.stderr)
        assert current(database_url) == "0098" and "upgrade_probe" in zone_columns(database_url)
        assert node.terminate() == 0
    finally:
        node.close()
    contracted = ctl(["db", "contract", "--migrations", location], env)
    assert contracted.returncode == 0 and "contracted to revision 0099" in contracted.stdout, (
        contracted.stderr
    )
    assert current(database_url) == "0099" and "upgrade_probe" not in zone_columns(database_url)
    again = ctl(["db", "upgrade", "--migrations", location], env)
    assert again.stdout.strip() == "database already at revision 0099"


async def test_upgrade_restarts_supervised_nodes_one_at_a_time(env, client, tmp_path):  # noqa: F811
    run_dirs = [tmp_path / "a", tmp_path / "b"]
    try:
        for run_dir in run_dirs:
            started = await asyncio.to_thread(ctl, ["start", "--daemon", "--run-dir", str(run_dir)], env)
            assert started.returncode == 0, (started.stdout, started.stderr)
        before = {read_state(d).nodeUuid for d in run_dirs}  # type: ignore[union-attr]
        zone = (await client.api("CreateZone", {"name": "z"}))["inventory"]["uuid"]
        answered, failures = 0, []
        stop_load = asyncio.Event()

        async def load():
            nonlocal answered
            while not stop_load.is_set():
                try:
                    await client.api("UpdateZone", {"uuid": zone, "description": str(answered)}, timeout=30)
                    answered += 1
                except Exception as exc:
                    failures.append(exc)
                await asyncio.sleep(0.1)

        loader = asyncio.create_task(load())
        upgraded = await asyncio.to_thread(ctl, ["upgrade", "--timeout", "90"], env, 400)
        stop_load.set()
        await loader
        assert upgraded.returncode == 0, (upgraded.stdout, upgraded.stderr)
        assert "upgrade: 2 node(s) restarted one at a time" in upgraded.stdout
        after = {read_state(d).nodeUuid for d in run_dirs}  # type: ignore[union-attr]
        assert not before & after and len(after) == 2
        assert not failures, failures[:3]
        assert answered > 10
    finally:
        for run_dir in run_dirs:
            await asyncio.to_thread(ctl, ["stop", "--run-dir", str(run_dir)], env)
