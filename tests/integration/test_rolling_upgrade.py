"""A rolling upgrade from the previous release to this tree, one node at a time, under ~10 calls/s:
the previous release's nodes (its source, from git, run with its own PYTHONPATH) and this tree's
run side by side in one cluster; each old node is stopped (drain, hand over) and replaced by a new
one. No call is lost beyond those answered with a retryable error, and no job is lost.

The previous release is the git ref in RINGSTACK_PREVIOUS_RELEASE, by default v0.1.0's commit (named
by its id, so a clone without tags has it too); the test fails when it does not resolve."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import tarfile
import time
from pathlib import Path

import orjson
import pytest
from sqlalchemy import create_engine, text

from bus.envelope import new_uuid
from bus.errors import RingstackError
from bus.topology import QueueSpec, Topology
from tests.integration.test_ops import ctl, env, node_uuid  # noqa: F401  (env is a fixture)
from tests.support.procs import ROOT, NodeProcess

# v0.1.0 (the tag names this commit; the id works in a clone fetched without tags).
PREVIOUS = os.environ.get("RINGSTACK_PREVIOUS_RELEASE", "750bc31ff55c775ce892a605fc5a0e2faf1a490e")


class PreviousReleaseTopology(Topology):
    """What a 0.1.0 client addresses: the classic ``<ns>.api`` queue through the default exchange.
    Clients are upgraded after the nodes, so the load during the upgrade comes from such clients;
    the new nodes keep serving that queue while it exists (``QueueSpec.previous``)."""

    @property
    def api_queue(self) -> QueueSpec:
        return QueueSpec(f"{self.namespace}.api", durable=True, arguments=self._dead_lettered())

    def route_to(self, queue: str) -> tuple[str, str]:
        return "", queue


@pytest.fixture
async def old_client(namespace: str, broker_url: str):
    from tests.support.identity import SessionBus

    bus = SessionBus(
        broker_url,
        PreviousReleaseTopology(namespace),
        process_name=f"old-client-{namespace}",
        default_timeout=10,
    )
    await bus.start()
    try:
        yield bus
    finally:
        await bus.close()


RETRYABLE = {"SYS.SHUTTING_DOWN", "SYS.UNAVAILABLE", "SYS.BUSY"}


def previous_release(into: Path) -> Path:
    found = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--verify", "--quiet", f"{PREVIOUS}^{{commit}}"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert found.returncode == 0, (
        f"the previous release {PREVIOUS!r} is not in this clone (fetch it, or set RINGSTACK_PREVIOUS_RELEASE)"
    )
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", found.stdout.strip()], capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


async def test_rolling_upgrade_under_load(env, old_client, client, database_url, tmp_path):  # noqa: F811
    old_tree = previous_release(tmp_path / "previous")
    old_env = {**env, "PYTHONPATH": str(old_tree)}
    nodes = [NodeProcess(old_env, f"old-{i}", cwd=old_tree) for i in range(2)]
    new_nodes: list[NodeProcess] = []
    try:
        for node in nodes:
            node.wait_ready(90)
            cwd = await asyncio.to_thread(os.readlink, f"/proc/{node.proc.pid}/cwd")
            assert Path(cwd) == old_tree  # the old code runs
        zone = (await old_client.api("CreateZone", {"name": "z"}))["inventory"]["uuid"]
        outcomes: list[object] = []
        calls: list[asyncio.Task] = []
        stop_load = asyncio.Event()

        async def one(i: int) -> None:
            try:
                if i % 2:
                    await old_client.api("AuditedWork", {"uuid": new_uuid(), "seconds": 0.3}, timeout=90)
                else:
                    await old_client.api("UpdateZone", {"uuid": zone, "description": str(i)}, timeout=90)
                outcomes.append("ok")
            except RingstackError as exc:
                outcomes.append(exc)

        async def load() -> None:
            i = 0
            while not stop_load.is_set():
                calls.append(asyncio.create_task(one(i)))
                i += 1
                await asyncio.sleep(0.1)  # ~10 calls/s

        loader = asyncio.create_task(load())
        started = time.monotonic()
        steps = []
        for i, old in enumerate(nodes):
            step = time.monotonic()
            stopped = await asyncio.to_thread(ctl, ["stop", node_uuid(old), "--timeout", "60"], env)
            assert stopped.returncode == 0, (stopped.stdout, stopped.stderr, old.log)
            assert old.proc.wait(10) == 0
            stop_seconds = time.monotonic() - step
            new = NodeProcess(env, f"new-{i}")
            new_nodes.append(new)
            await asyncio.to_thread(new.wait_ready, 90)
            ready_seconds = time.monotonic() - step - stop_seconds

            def healthy() -> bool:
                status = ctl(["status", "-f", "json"], env)
                return status.returncode == 0 and len(orjson.loads(status.stdout)["nodes"]) >= 2

            deadline = time.monotonic() + 60
            while not await asyncio.to_thread(healthy):
                assert time.monotonic() < deadline, "the mixed cluster did not become healthy"
            steps.append(
                f"stop {stop_seconds:.1f} + start {ready_seconds:.1f} + healthy {time.monotonic() - step - stop_seconds - ready_seconds:.1f} s"
            )
        stop_load.set()
        await loader
        await asyncio.wait_for(asyncio.gather(*calls), 120)
        total = time.monotonic() - started
        # Upgraded, clients of this release are served too.
        assert (await client.api("QueryZone", {"conditions": [{"name": "uuid", "op": "=", "value": zone}]}))[
            "inventories"
        ]
    finally:
        for node in [*nodes, *new_nodes]:
            node.close()
    lost = [o for o in outcomes if isinstance(o, RingstackError) and o.code not in RETRYABLE]
    retried = [o for o in outcomes if isinstance(o, RingstackError) and o.code in RETRYABLE]
    assert not lost, lost[:5]
    answered = outcomes.count("ok")
    assert answered >= 0.9 * len(outcomes) and len(outcomes) > 50, (answered, len(outcomes))
    engine = create_engine(database_url)
    with engine.connect() as conn:
        left = conn.execute(text("SELECT count(*) FROM job WHERE state IN ('pending', 'running')")).scalar()
        failed = conn.execute(text("SELECT count(*) FROM job WHERE state = 'failed'")).scalar()
    engine.dispose()
    assert (left, failed) == (0, 0)
    print(
        f"rolling upgrade {PREVIOUS} -> this tree: 2 nodes in {total:.1f} s (per node: {'; '.join(steps)}),"
        f" {len(outcomes)} calls, {answered} answered, {len(retried)} retryable errors, 0 lost, 0 jobs left"
    )
