"""ringstack-ctl against real node processes: /healthz, /readyz, /metrics; status -f json and its
verdict; drain (readiness false at once, no more API requests, owned work goes on); stop under 100
calls in flight (every call answered, no job left pending, within 60 s)."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import time
import urllib.error
import urllib.request

import orjson
import pytest
from sqlalchemy import create_engine, text

from bus.envelope import Envelope, new_uuid
from tests.support.cluster import until
from tests.support.procs import CTL, ROOT, NodeProcess, node_env
from tests.support.services import AUDIT_DDL


@pytest.fixture
def env(database_url, namespace, broker_url):
    engine = create_engine(database_url)
    with engine.begin() as conn:
        conn.execute(text(AUDIT_DDL))
    engine.dispose()
    return node_env(
        database_url,
        namespace,
        broker_url,
        extra_services="tests.support.services:AuditService",
        drain_timeout="50",
        heartbeat_interval="0.5",
        lease_ttl="1.5",
    )


@pytest.fixture
def two(env):
    nodes = [NodeProcess(env, "a"), NodeProcess(env, "b")]
    try:
        for node in nodes:
            node.wait_ready(60)
        yield nodes
    finally:
        for node in nodes:
            node.close()


def ctl(args: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CTL, *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def node_uuid(node: NodeProcess) -> str:
    return re.search(r"node ([0-9a-f]{32}) ready", node.wait_for_line(" ready: ")).group(1)  # type: ignore[union-attr]


def endpoint(node: NodeProcess) -> str:
    return re.search(r"ops endpoint at (http://\S+)", node.wait_for_line("ops endpoint at ")).group(1)  # type: ignore[union-attr]


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def metric(body: str, name: str) -> float:
    """The sum of a metric's samples whose line starts with ``name`` (labels included in name)."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines() if line.startswith(name))


async def test_health_metrics_status_and_drain(two, env, client):
    a, b = two
    a_uuid, b_uuid = node_uuid(a), node_uuid(b)
    url = endpoint(a)
    assert get(f"{url}/healthz") == (200, "ok\n")
    assert get(f"{url}/readyz") == (200, "ready\n")
    assert get(f"{url}/nothing")[0] == 404

    async def both_members():
        status = await asyncio.to_thread(ctl, ["status", "-f", "json"], env)
        doc = orjson.loads(status.stdout)
        return doc if status.returncode == 0 and doc["healthy"] and len(doc["nodes"]) == 2 else None

    doc = await until(both_members, 30, "a healthy two-node status")
    assert doc["ownedPartitions"] == 256 and doc["problems"] == []
    assert {n["uuid"] for n in doc["nodes"]} == {a_uuid, b_uuid}
    assert all(n["ready"] and n["answered"] and n["opsAddress"] for n in doc["nodes"])
    schema = orjson.loads(ctl(["status", "--schema"], env).stdout)
    assert set(doc) == set(schema["properties"])

    for _ in range(20):
        await client.api("QueryZone", {})
    _, body = get(f"{url}/metrics")
    for name in (
        "ringstack_api_seconds_bucket",
        "ringstack_jobs{",
        "ringstack_serial_queue_depth",
        "ringstack_ring_epoch",
        "ringstack_ring_members 2.0",
        "ringstack_db_pool_connections{",
        "ringstack_broker_reconnects_total 0.0",
        "ringstack_ready 1.0",
    ):
        assert name in body, name
    b_url = endpoint(b)
    served = metric(body, 'ringstack_api_seconds_count{message="QueryZone"}') + metric(
        get(f"{b_url}/metrics")[1], 'ringstack_api_seconds_count{message="QueryZone"}'
    )
    assert served >= 20  # both nodes take API requests (the login counts too)

    # Drain a: not ready once the command returns (measured in-process: the call's round trip).
    started = time.monotonic()
    drained = await client.call(client.topology.node_queue(a_uuid).name, "ops.Drain", {}, timeout=10)
    took = time.monotonic() - started
    assert drained["ready"] is False and drained["draining"] is True
    assert get(f"{url}/readyz") == (503, "draining\n") and took < 1.0, took
    before = metric(get(f"{url}/metrics")[1], 'ringstack_api_seconds_count{message="QueryZone"}')
    for _ in range(30):
        await client.api("QueryZone", {})
    assert metric(get(f"{url}/metrics")[1], 'ringstack_api_seconds_count{message="QueryZone"}') == before
    # It keeps the work it owns: requests about its resources, taken by b, run on a.
    replies = await asyncio.gather(
        *(client.api("AuditedWork", {"uuid": new_uuid(), "seconds": 0}) for _ in range(16))
    )
    assert a_uuid in {r["nodeUuid"] for r in replies}
    unhealthy = await asyncio.to_thread(ctl, ["status", "-f", "json"], env)
    assert unhealthy.returncode == 1
    assert f"node {a_uuid} is draining" in orjson.loads(unhealthy.stdout)["problems"]
    # ringstack-ctl drain, the command, on the other node (already drained a: both now drained).
    out = await asyncio.to_thread(ctl, ["drain", b_uuid[:8]], env)
    assert out.returncode == 0 and "ready=false" in out.stdout, out.stderr
    assert get(f"{b_url}/readyz")[0] == 503


async def test_stop_with_100_calls_in_flight(two, env, client, database_url):
    a, _ = two  # b takes over what a hands over
    a_uuid = node_uuid(a)
    running: set[str] = set()

    async def on_event(e: Envelope):
        running.add(e.body["resourceUuid"])

    consumer = client.consume(client.topology.event_queue("ops-stop", "job.*.running"), on_event)
    await client.start_consumer(consumer)
    calls = [
        asyncio.create_task(client.api("AuditedWork", {"uuid": new_uuid(), "seconds": 2}, timeout=90))
        for _ in range(100)
    ]

    async def some_running():
        return len(running) >= 10

    await until(some_running, 60, "jobs to run")
    started = time.monotonic()
    stopped = await asyncio.to_thread(ctl, ["stop", a_uuid, "--timeout", "60"], env)
    stop_seconds = time.monotonic() - started
    assert stopped.returncode == 0, (stopped.stdout, stopped.stderr, a.log)
    assert a.proc.wait(10) == 0
    results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 60)
    total = time.monotonic() - started
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors[:3]
    assert len(results) == 100 and total < 60, total
    engine = create_engine(database_url)
    with engine.connect() as conn:
        left = conn.execute(text("SELECT count(*) FROM job WHERE state IN ('pending', 'running')")).scalar()
        done = conn.execute(
            text("SELECT count(*) FROM job WHERE name = 'AuditedWork' AND state = 'succeeded'")
        ).scalar()
    engine.dispose()
    assert (left, done) == (0, 100)
    print(
        f"stop: node exited {stop_seconds:.1f} s after `ringstack-ctl stop`; all 100 answered in {total:.1f} s"
    )


async def test_backup_restore_round_trip(env, client, tmp_path):
    config = tmp_path / "ringstack.toml"
    config.write_text('log_level = "INFO"\n')
    env = {**env, "RINGSTACK_CONFIG": str(config)}
    node = NodeProcess(env).wait_ready(60)
    try:
        kept = (await client.api("CreateZone", {"name": "kept"}))["inventory"]["uuid"]
        archive = tmp_path / "backup.tar.gz"
        made = await asyncio.to_thread(ctl, ["backup", "-o", str(archive)], env)
        assert made.returncode == 0, made.stderr
        assert oct(archive.stat().st_mode & 0o777) == "0o600"
        # Changes after the backup: one zone gone, one new.
        await client.api("DeleteZone", {"uuid": kept})
        later = (await client.api("CreateZone", {"name": "later"}))["inventory"]["uuid"]
        refused = await asyncio.to_thread(ctl, ["restore", str(archive)], env)
        assert refused.returncode != 0 and "stop them first" in refused.stderr
        assert node.terminate() == 0
    finally:
        node.close()
    restored = await asyncio.to_thread(
        ctl, ["restore", str(archive), "--config-to", str(tmp_path / "back.toml")], env
    )
    assert restored.returncode == 0, restored.stderr
    assert (tmp_path / "back.toml").read_text() == config.read_text()
    node = NodeProcess(env, "after").wait_ready(60)
    try:
        zones = (await client.api("QueryZone", {"fields": ["uuid", "name"]}))["inventories"]
        assert [z["uuid"] for z in zones] == [kept]  # as it was at the backup, "later" never happened
        assert later not in {z["uuid"] for z in zones}
        # and the restored cluster works: new requests, new jobs
        assert (await client.api("UpdateZone", {"uuid": kept, "name": "kept-2"}))["inventory"][
            "name"
        ] == "kept-2"
    finally:
        node.close()


async def test_logs_and_collect_logs_from_every_node(env, tmp_path):
    import tarfile

    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    nodes = [NodeProcess({**env, "RINGSTACK_LOG_FILE": str(log)}, log.stem) for log in logs]
    try:
        uuids = [node_uuid(n.wait_ready(60)) for n in nodes]
        tail = await asyncio.to_thread(ctl, ["logs", "-n", "3"], {**env, "RINGSTACK_LOG_FILE": str(logs[0])})
        assert tail.returncode == 0 and len(tail.stdout.splitlines()) == 3, tail.stderr
        assert tail.stdout.splitlines() == logs[0].read_text().splitlines()[-3:]
        archive = tmp_path / "logs.tar.gz"
        made = await asyncio.to_thread(ctl, ["collect-logs", "-o", str(archive)], env)
        assert made.returncode == 0 and "2 node(s), 0 error(s)" in made.stdout, (made.stdout, made.stderr)
        with tarfile.open(archive) as tar:
            names = set(tar.getnames())
            assert "status.json" in names
            for uuid in uuids:
                assert {f"nodes/{uuid}/{f}" for f in ("status.json", "log.txt", "metrics.txt")} <= names
                log = tar.extractfile(f"nodes/{uuid}/log.txt").read().decode()  # type: ignore[union-attr]
                assert f"node {uuid} ready" in log
                metrics = tar.extractfile(f"nodes/{uuid}/metrics.txt").read().decode()  # type: ignore[union-attr]
                assert "ringstack_ring_epoch" in metrics
    finally:
        for node in nodes:
            node.close()
