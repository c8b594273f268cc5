"""A real management-node process: SIGTERM drains in-flight work; the CLI drives it end to end."""

from __future__ import annotations

import asyncio
import signal

import orjson
import pytest
import yaml

from bus.envelope import Envelope
from tests.support.identity import cli_login
from tests.support.procs import NodeProcess, node_env, run_cli


@pytest.fixture
def env(database_url, namespace, broker_url):
    return node_env(
        database_url,
        namespace,
        broker_url,
        extra_services="tests.support.services:TestingService",
        drain_timeout="20",
    )


@pytest.fixture
def node_proc(env):
    proc = NodeProcess(env)
    try:
        yield proc.wait_ready()
    finally:
        proc.close()


async def test_sigterm_drains_in_flight_requests_then_exits_0(node_proc, env, client):
    started: asyncio.Queue[str] = asyncio.Queue()

    async def on_event(e: Envelope):
        started.put_nowait(e.body["resourceUuid"])

    consumer = client.consume(client.topology.event_queue("drain", "testsleep.*.started"), on_event)
    await client.start_consumer(consumer)
    calls = [
        asyncio.create_task(client.api("TestSleep", {"seconds": 1.0, "tag": f"s{i}"}, timeout=30))
        for i in range(10)
    ]
    tags = {await asyncio.wait_for(started.get(), 20) for _ in range(10)}
    assert tags == {f"s{i}" for i in range(10)}  # all ten are running inside the node

    node_proc.proc.send_signal(signal.SIGTERM)
    results = await asyncio.gather(*calls)
    assert sorted(r["tag"] for r in results) == sorted(tags)
    assert await asyncio.to_thread(node_proc.proc.wait, 30) == 0
    assert "stop requested; draining" in node_proc.log


async def test_a_draining_node_takes_no_new_work(env, client):
    first = NodeProcess(env, "first").wait_ready()
    second = None
    try:
        started: asyncio.Queue[str] = asyncio.Queue()

        async def on_event(e: Envelope):
            started.put_nowait(e.body["resourceUuid"])

        consumer = client.consume(client.topology.event_queue("drain2", "testsleep.*.started"), on_event)
        await client.start_consumer(consumer)
        long_call = asyncio.create_task(client.api("TestSleep", {"seconds": 2, "tag": "long"}, timeout=30))
        assert await asyncio.wait_for(started.get(), 20) == "long"
        first.proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(first.wait_for_line, "stop requested")
        # Sent while the first node drains: it must wait for another node, not run on the first.
        late_call = asyncio.create_task(client.api("TestSleep", {"seconds": 0, "tag": "late"}, timeout=30))
        assert (await long_call)["tag"] == "long"
        assert await asyncio.to_thread(first.proc.wait, 30) == 0
        assert not late_call.done()
        second = NodeProcess(env, "second").wait_ready()
        assert (await asyncio.wait_for(late_call, 30))["tag"] == "late"
    finally:
        first.close()
        if second is not None:
            second.close()


def test_cli_end_to_end(node_proc, env, tmp_path):
    env = cli_login(env, tmp_path)  # every API but the public ones needs a session
    created = run_cli(["CreateZone", "name=cli-zone", "description=made by the CLI", "-f", "json"], env)
    assert created.returncode == 0, created.stderr
    zone = orjson.loads(created.stdout)["inventory"]
    assert zone["name"] == "cli-zone"

    listed = run_cli(["QueryZone", "name~=cli-%", "-f", "yaml"], env)
    assert listed.returncode == 0, listed.stderr
    assert [z["uuid"] for z in yaml.safe_load(listed.stdout)["inventories"]] == [zone["uuid"]]

    table = run_cli(["QueryZone", f"uuid={zone['uuid']}", "fields=uuid,name"], env)
    assert table.returncode == 0
    assert "cli-zone" in table.stdout and "| uuid" in table.stdout

    bad = run_cli(["CreateZone", "name="], env)
    assert bad.returncode == 1
    assert "SYS.INVALID_ARGUMENT" in bad.stderr and "name" in bad.stderr

    missing = run_cli(["UpdateZone", f"uuid={'f' * 32}", "name=x"], env)
    assert missing.returncode == 1 and "SYS.NOT_FOUND" in missing.stderr

    for usage in (
        ["NoSuchApi"],
        ["CreateZone", "justaword"],
        ["CreateZone", "name=a", "name=b"],
        ["-f", "xml", "QueryZone"],
        [],
    ):
        result = run_cli(usage, env)
        assert result.returncode == 2, (usage, result.stdout, result.stderr)
        assert result.stderr.strip()


def test_cli_reports_an_unreachable_broker(env):
    result = run_cli(
        ["QueryZone"], {**env, "RINGSTACK_BROKER_URL": "amqp://guest:guest@127.0.0.1:1/"}, timeout=30
    )
    assert result.returncode == 3  # cannot reach the cluster
    assert "SYS.UNAVAILABLE" in result.stderr and "guest:***@" in result.stderr
