"""The async bus on the real broker: round trips, deadlines, bad messages, concurrency, routing."""

from __future__ import annotations

import asyncio
import gc
import socket
import time
from collections import Counter

import aio_pika
import kombu
import orjson
import pytest

from bus.aio import AsyncBus
from bus.envelope import Envelope
from bus.errors import RingstackError, Sys
from bus.topology import Topology
from tests.support import infra


@pytest.fixture
async def pair(broker_url, namespace):
    """A server bus consuming one queue with a small set of handlers, and a client bus."""
    topo = Topology(namespace)
    server = AsyncBus(broker_url, topo, process_name=f"test-server-{namespace}", max_message_bytes=64 * 1024)
    client = AsyncBus(broker_url, topo, process_name=f"test-client-{namespace}", default_timeout=5)
    await server.start()
    await client.start()
    calls: Counter[str] = Counter()
    release = asyncio.Event()

    async def handler(env: Envelope):
        calls[env.body.get("key", env.name)] += 1
        if env.name == "Echo":
            return {"echo": env.body}
        if env.name == "Hang":
            await release.wait()
            return {}
        if env.name == "Fail":
            raise RingstackError("TEST.FAILED", "as asked", details={"why": "test"})
        if env.name == "Crash":
            raise ValueError("a bug with a secret traceback")
        raise RingstackError(Sys.UNKNOWN_MESSAGE, f"no handler for {env.name}")

    spec = topo.node_queue("server")
    consumer = server.consume(spec, handler, prefetch=256)
    await server.start_consumer(consumer)
    yield client, server, spec.name, calls
    release.set()
    await client.close()
    await server.close()


async def test_call_round_trip(pair):
    client, _, queue, _ = pair
    assert await client.call(queue, "Echo", {"a": [1, 2], "b": "é"}) == {"echo": {"a": [1, 2], "b": "é"}}


async def test_remote_error_keeps_code_and_details_but_no_traceback(pair):
    client, _, queue, _ = pair
    with pytest.raises(RingstackError) as err:
        await client.call(queue, "Fail", {})
    assert (err.value.code, err.value.details) == ("TEST.FAILED", {"why": "test"})
    with pytest.raises(RingstackError) as err:
        await client.call(queue, "Crash", {})
    assert err.value.code == Sys.INTERNAL
    assert "secret" not in err.value.message and "Traceback" not in err.value.message


async def test_deadline_gives_timeout_and_the_consumer_goes_on(pair):
    client, _, queue, _ = pair
    started = time.monotonic()
    with pytest.raises(RingstackError) as err:
        await client.call(queue, "Hang", {}, timeout=0.3)
    assert err.value.code == Sys.TIMEOUT
    assert 0.3 <= time.monotonic() - started < 2
    assert await client.call(queue, "Echo", {"x": 1}) == {"echo": {"x": 1}}


async def test_unknown_message_gets_error_reply_and_consumer_goes_on(pair):
    client, _, queue, _ = pair
    with pytest.raises(RingstackError) as err:
        await client.call(queue, "NoSuchThing", {})
    assert err.value.code == Sys.UNKNOWN_MESSAGE
    assert await client.call(queue, "Echo", {}) == {"echo": {}}


async def test_oversized_request_is_refused_by_the_sender(pair):
    client, _, queue, _ = pair
    with pytest.raises(RingstackError) as err:
        await client.call(queue, "Echo", {"blob": "x" * (2 << 20)})
    assert err.value.code == Sys.MESSAGE_TOO_LARGE


async def test_oversized_request_from_a_lenient_sender_gets_error_reply(pair, broker_url, namespace):
    """The server has a 64 KiB limit; a client allowing 1 MiB sends 100 KiB: error reply, no crash."""
    client, _, queue, calls = pair
    with pytest.raises(RingstackError) as err:
        await client.call(queue, "Echo", {"key": "big", "blob": "x" * 100_000})
    assert err.value.code == Sys.MESSAGE_TOO_LARGE
    assert calls["big"] == 0
    assert await client.call(queue, "Echo", {"n": 1}) == {"echo": {"n": 1}}


def _raw_publish(queue: str, body: bytes, **properties) -> None:
    with kombu.Connection(infra.BROKER_URL) as conn:
        producer = kombu.Producer(conn.default_channel)
        producer.publish(
            body, routing_key=queue, content_type="application/json", content_encoding="binary", **properties
        )


@pytest.mark.parametrize(
    "body",
    [
        b"not json at all",
        b"[1, 2, 3]",
        b'{"name": "Echo"}',
        b'{"id": "x", "name": "Echo", "kind": "call", "body": [], "reply_to": "q"}',
        b'{"id": "x", "name": "Echo", "kind": "sideways", "body": {}}',
        b'{"id": "x", "name": "Echo", "kind": "call", "body": {}, "deadline": "soon"}',
        b'{"id": "x", "name": "Echo", "kind": "call", "body": {}, "reply_to": "' + b"r" * 256 + b'"}',
        b'{"id": "' + b"i" * 256 + b'", "name": "Echo", "kind": "call", "body": {}}',
        b"\xff\xfe\x00garbage",
    ],
)
async def test_malformed_message_gets_error_reply_and_consumer_goes_on(pair, body):
    """A raw AMQP client sending garbage with reply_to gets SYS.MALFORMED_MESSAGE back."""
    client, _, queue, _ = pair
    fut = client.expect_reply("raw-corr")  # the reply is addressed to our reply queue by correlation id
    await asyncio.to_thread(_raw_publish, queue, body, reply_to=client.reply_queue, correlation_id="raw-corr")
    reply = await asyncio.wait_for(fut, 5)
    assert reply.error["code"] == Sys.MALFORMED_MESSAGE
    assert await client.call(queue, "Echo", {"after": True}) == {"echo": {"after": True}}


async def test_ids_and_addresses_beyond_a_short_string_never_hold_a_prefetch_slot(pair):
    """More such messages than the consumer's prefetch window: each is settled (answered when it
    can be), so the window never fills up and the consumer goes on answering."""
    client, server, queue, _ = pair
    fut = client.expect_reply("long-corr")
    bad = [
        {"id": "i" * 256, "name": "NoSuchApi", "kind": "api", "body": {}, "reply_to": "x"},
        {"id": "ok", "name": "Echo", "kind": "call", "body": {}, "reply_to": "x" * 256},
        {"id": "ok", "name": "Echo", "kind": "call", "body": {}, "correlation_id": "c" * 256},
    ]

    def flood() -> None:
        with kombu.Connection(infra.BROKER_URL) as conn:
            producer = kombu.Producer(conn.default_channel)
            for i in range(300):
                producer.publish(orjson.dumps(bad[i % 3]), routing_key=queue, content_encoding="binary")
            # And one that asks, by property, for its answer.
            producer.publish(
                orjson.dumps(bad[0]),
                routing_key=queue,
                content_encoding="binary",
                reply_to=client.reply_queue,
                correlation_id="long-corr",
            )

    await asyncio.to_thread(flood)
    reply = await asyncio.wait_for(fut, 10)
    assert reply.error["code"] == Sys.MALFORMED_MESSAGE
    assert reply.error["details"] == {"field": "id"}
    assert await client.call(queue, "Echo", {"after": 300}) == {"echo": {"after": 300}}
    assert server.connection_count == 1


@pytest.mark.parametrize("prop", ["app_id", "type", "reply_to", "correlation_id", "message_id"])
async def test_properties_that_are_not_utf8_do_not_break_the_connection(pair, prop):
    """kombu writes the lone surrogate "\udcff" as the bytes ED B3 BF, which pamqp cannot decode:
    once, that dropped the consumer's connection and the redelivered message did so for ever."""
    client, server, queue, calls = pair
    fut = client.expect_reply("poison")  # a readable envelope is answered by its id
    env = {"id": "poison", "name": "Echo", "kind": "call", "body": {"key": f"poison-{prop}"}}
    properties = {"reply_to": client.reply_queue, "correlation_id": "poison-corr", prop: "\udcff"}
    await asyncio.to_thread(_raw_publish, queue, orjson.dumps(env), **properties)
    assert await client.call(queue, "Echo", {"after": prop}) == {"echo": {"after": prop}}
    if prop not in ("reply_to", "correlation_id"):
        # Still answered, because the addresses it needs are intact.
        assert (await asyncio.wait_for(fut, 5)).body == {"echo": {"key": f"poison-{prop}"}}
    assert calls[f"poison-{prop}"] == 1
    assert server.connection_count == 1


async def test_a_request_addressed_only_by_the_reply_to_property_is_answered(pair):
    client, _, queue, _ = pair
    fut = client.expect_reply("prop-only")
    env = {"id": "prop-only", "name": "Echo", "kind": "call", "body": {"by": "property"}}
    await asyncio.to_thread(_raw_publish, queue, orjson.dumps(env), reply_to=client.reply_queue)
    assert (await asyncio.wait_for(fut, 5)).body == {"echo": {"by": "property"}}


async def test_unanswerable_garbage_is_dead_lettered(pair, namespace):
    client, server, queue, _ = pair
    dlq = Topology(namespace).dead_letter_queue
    await server.declare_queue(dlq)
    before = infra.queue_depth(dlq.name)
    await asyncio.to_thread(_raw_publish, queue, b"garbage without reply_to")
    await asyncio.to_thread(
        _raw_publish, queue, orjson.dumps({"id": "u1", "name": "NoSuchThing", "kind": "call", "body": {}})
    )
    deadline = time.monotonic() + 10
    while infra.queue_depth(dlq.name) < before + 2:
        assert time.monotonic() < deadline, "dead-lettered messages did not arrive"
        await asyncio.sleep(0.05)
    assert await client.call(queue, "Echo", {}) == {"echo": {}}


async def test_expired_request_is_not_executed(pair):
    client, _, queue, calls = pair
    env = Envelope(name="Echo", kind="call", body={"key": "late"}, deadline=time.time() - 1)
    await client.send(queue, env)
    assert await client.call(queue, "Echo", {"key": "fresh"}) == {"echo": {"key": "fresh"}}
    assert calls["late"] == 0


async def test_call_to_a_queue_nobody_consumes_fails_at_once(pair, namespace):
    client, _, _, _ = pair
    started = time.monotonic()
    with pytest.raises(RingstackError) as err:
        await client.call(Topology(namespace).node_queue("gone").name, "Echo", {}, timeout=10)
    assert err.value.code == Sys.UNAVAILABLE
    assert time.monotonic() - started < 2


async def test_200_concurrent_calls_each_answered_exactly_once(pair):
    client, _, queue, calls = pair
    results = await asyncio.gather(
        *(client.call(queue, "Echo", {"key": f"k{i}", "i": i}) for i in range(200))
    )
    assert [r["echo"]["i"] for r in results] == list(range(200))
    assert all(calls[f"k{i}"] == 1 for i in range(200))
    assert client.awaiting_replies == 0  # nothing left waiting


async def test_events_reach_subscribers_by_topic(pair, namespace):
    client, server, _, _ = pair
    got: asyncio.Queue = asyncio.Queue()

    async def on_event(env: Envelope):
        got.put_nowait((env.name, env.body))

    consumer = server.consume(Topology(namespace).event_queue("t", "vm.*.state"), on_event)
    await server.start_consumer(consumer)
    await client.publish_event("zone.z1.created", "zone.created", {"n": 0})  # not bound: dropped
    await client.publish_event("vm.v1.state", "vm.state", {"n": 1})
    assert await asyncio.wait_for(got.get(), 5) == ("vm.state", {"n": 1})
    assert got.empty()


async def test_failed_connects_leave_no_connection_for_the_garbage_collector_to_close():
    """aio-pika's Connection closes itself in __del__ with ensure_future(self.close()); collected
    in a thread without a loop, that was 'coroutine Connection.close was never awaited'."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens there
    bus = AsyncBus(f"amqp://guest:guest@127.0.0.1:{port}/", reconnect_initial=0.01, reconnect_max=0.01)
    gc.disable()  # keep what the failed attempts leave, to look at it
    try:
        with pytest.raises(RingstackError):
            await bus.start(timeout=0.5)
        await bus.close()
        unclosed = [o for o in gc.get_objects() if isinstance(o, aio_pika.Connection) and not o.is_closed]
    finally:
        gc.enable()
    assert unclosed == []
