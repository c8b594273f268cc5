"""Broker faults: the broker closes connections or restarts; nodes and clients recover, calls in
flight fail cleanly (never hang) and later calls succeed."""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time

import kombu
import pytest

from bus.aio import AsyncBus
from bus.envelope import Envelope, new_uuid
from bus.errors import RingstackError, Sys
from bus.topology import Topology
from tests.support import infra
from tests.support.identity import SessionSyncClient


async def test_client_connection_closed_fails_in_flight_call_then_recovers(node, client, namespace):
    hung: asyncio.Event = asyncio.Event()
    never: asyncio.Event = asyncio.Event()

    async def hang(env):
        hung.set()
        await never.wait()
        return {}

    server = AsyncBus(infra.BROKER_URL, Topology(namespace), process_name=f"hang-{namespace}")
    await server.start()
    spec = Topology(namespace).node_queue("hang")
    await server.start_consumer(server.consume(spec, hang))
    try:
        call = asyncio.create_task(client.call(spec.name, "Hang", {}, timeout=30))
        await asyncio.wait_for(hung.wait(), 10)
        started = time.monotonic()
        assert await asyncio.to_thread(infra.close_connections, f"test-client-{namespace}") == 1
        with pytest.raises(RingstackError) as err:
            await call
        assert err.value.code == Sys.CONNECTION_LOST
        assert time.monotonic() - started < 5
        await client.wait_connections(2, 30)
        zone = await client.api("CreateZone", {"name": "after"})
        assert zone["inventory"]["name"] == "after"
    finally:
        never.set()
        await server.close()


async def test_node_connection_closed_node_recovers(node, client):
    await client.api("CreateZone", {"name": "before"})
    assert await asyncio.to_thread(infra.close_connections, node.bus.process_name) == 1
    # Reconnected means every consumer is back: the very next call is answered.
    await node.bus.wait_connections(2, 30)
    zone = await client.api("CreateZone", {"name": "after"}, timeout=10)
    assert zone["inventory"]["name"] == "after"
    names = {z["name"] for z in (await client.api("QueryZone", {}))["inventories"]}
    assert names == {"before", "after"}
    # its own exclusive queue was declared again: routed calls reach it
    reply = await client.call(node.topology.node_queue(node.uuid).name, "QueryZone", {"count": True})
    assert reply["total"] == 2


async def test_connections_killed_under_load_leave_no_unobserved_error_and_lose_no_call(
    broker_url, namespace, caplog
):
    """A consumer's connection is force-closed three times with a hundred requests in its hands:
    every call is still answered (the broker redelivers what was not acked), nothing the client
    library raises on the dead channels goes unobserved, and the consumer is back each time."""
    topo = Topology(namespace)
    spec = topo.api_queue  # durable: what the dying connection held is redelivered
    server_name = f"loaded-{namespace}"
    server = AsyncBus(broker_url, topo, process_name=server_name, reconnect_initial=0.05)
    client = AsyncBus(broker_url, topo, process_name=f"load-client-{namespace}", default_timeout=60)
    entered = 0
    crowded = asyncio.Event()
    gate = asyncio.Event()

    async def work(env: Envelope) -> dict[str, object]:
        nonlocal entered
        entered += 1
        if entered >= 100:
            crowded.set()
        await gate.wait()
        return {"n": env.body["n"]}

    await server.start()
    await client.start()
    await server.start_consumer(server.consume(spec, work, prefetch=128))
    caplog.set_level(logging.WARNING)
    try:
        calls = [asyncio.create_task(client.call(spec.name, "Work", {"n": i})) for i in range(300)]
        for round_ in range(3):
            await asyncio.wait_for(crowded.wait(), 30)
            crowded.clear()
            entered = 0
            assert await asyncio.to_thread(infra.close_connections, server_name) == 1
            await server.wait_connections(round_ + 2, 30)
        gate.set()
        replies = await asyncio.wait_for(asyncio.gather(*calls), 60)
        assert sorted(r["n"] for r in replies) == list(range(300))
    finally:
        gate.set()
        await client.close()
        await server.close()
    gc.collect()  # unobserved task and future exceptions are reported when they are collected
    unobserved = [r.getMessage() for r in caplog.records if "never retrieved" in r.getMessage()]
    assert not unobserved, unobserved[:3]
    assert not [r for r in caplog.records if r.name == "bus.aio" and r.levelno >= logging.ERROR]


async def test_in_flight_api_call_survives_node_connection_loss(node_config, client):
    """The node's connection dies while it handles a request: the unacked request is redelivered
    after the node reconnects, and the client still gets exactly one answer before its deadline."""
    from mgmt.node import ManagementNode

    node = ManagementNode(
        node_config.model_copy(update={"extra_services": ["tests.support.services:GateService"]})
    )
    await node.start()
    try:
        (gated,) = [s for s in node.services if s.name == "testing-gate"]
        uuid = new_uuid()
        call = asyncio.create_task(client.api("GatedWork", {"uuid": uuid}, timeout=30))
        await asyncio.wait_for(gated.entered.wait(), 10)
        assert await asyncio.to_thread(infra.close_connections, node.bus.process_name) == 1
        await node.bus.wait_connections(2, 30)
        gated.gate.set()
        reply = await asyncio.wait_for(call, 30)
        assert reply["uuid"] == uuid
    finally:
        await node.stop()


def test_sync_client_recovers_after_its_connection_is_closed(node_config, namespace):
    """The sync client's next call after a broker-side close reconnects by itself."""
    from mgmt.node import ManagementNode

    ready = threading.Event()
    stop = threading.Event()
    loop_holder: dict = {}

    def run_node():
        async def main():
            n = ManagementNode(node_config)
            await n.start()
            ready.set()
            await asyncio.to_thread(stop.wait)
            await n.stop()

        loop_holder["loop"] = asyncio.new_event_loop()
        loop_holder["loop"].run_until_complete(main())

    thread = threading.Thread(target=run_node, daemon=True)
    thread.start()
    assert ready.wait(30)
    try:
        with SessionSyncClient(
            infra.BROKER_URL, Topology(namespace), process_name=f"sync-{namespace}"
        ) as sync:
            sync.api("CreateZone", {"name": "s1"})
            name = f"sync-{namespace}"
            assert infra.close_connections(name) == 1
            # The very next call notices the dead connection and reconnects within its deadline.
            assert sync.api("QueryZone", {"count": True}, timeout=5)["total"] == 1
            assert sync.api("QueryZone", {"count": True})["total"] == 1
            # Replies nobody waits for (late, duplicated, forged) are dropped, not kept.
            reply_queue = sync._reply_spec.name
            with kombu.Connection(infra.BROKER_URL) as conn:
                producer = kombu.Producer(conn.default_channel)
                for i in range(500):
                    stray = Envelope(name="QueryZone", kind="reply", correlation_id=f"stray{i}")
                    producer.publish(stray.encode(), routing_key=reply_queue, content_encoding="binary")
            assert sync.api("QueryZone", {"count": True})["total"] == 1
            assert sync.dropped_replies == 500
    finally:
        stop.set()
        thread.join(30)
