"""Poison messages on the real broker: a message that breaks its consumer is set aside after a
bounded number of deliveries, properties no decoder can read never drop the connection, a queue
deleted under a consumer is consumed again, and the API queue of an earlier release is still
served during an upgrade.

The consumer here is an ``AsyncBus`` on the shared API queue's spec (a quorum queue with a
delivery limit, ``bus/topology.py``); ``test_fuzz_poison.py`` sends the same messages to a node
process.
"""

from __future__ import annotations

import asyncio
import struct
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import aiormq
import kombu
import orjson
import pytest
from aiormq.abc import DeliveredMessage
from pamqp.commands import Basic

from bus.aio import AsyncBus
from bus.envelope import Envelope
from bus.topology import POISON_DELIVERY_LIMIT, QueueSpec, Topology
from tests.support import infra
from tests.support.cluster import until

# Content header property flags (AMQP 0-9-1 basic class): which properties follow.
_HEADERS_FLAG = 0x2000
_REPLY_TO_FLAG = 0x0200
_CORRELATION_ID_FLAG = 0x0400


def _short(value: str) -> bytes:
    raw = value.encode()
    return bytes([len(raw)]) + raw


def _table(key: str, value: bytes) -> bytes:
    content = _short(key) + value
    return struct.pack(">I", len(content)) + content


def nested_header(depth: int) -> bytes:
    """A headers table whose one value is an array nested ``depth`` deep: pamqp's decoder recurses
    once per level and raised RecursionError, which dropped the consumer's connection."""
    value = b"I" + struct.pack(">i", 1)
    for _ in range(depth):
        value = b"A" + struct.pack(">I", len(value)) + value
    return _table("deep", value)


class RawProperties(Basic.Properties):
    """Content-header properties written byte for byte: headers no well-behaved encoder would
    produce, followed by ``correlation_id`` and ``reply_to`` so a reply can still be addressed."""

    def __init__(self, headers: bytes, correlation_id: str, reply_to: str) -> None:
        super().__init__()
        self._raw = headers + _short(correlation_id) + _short(reply_to)

    def marshal(self) -> bytes:
        flags = _HEADERS_FLAG | _CORRELATION_ID_FLAG | _REPLY_TO_FLAG
        return struct.pack(">H", flags) + self._raw


async def publish_raw_properties(url: str, queue: str, body: bytes, properties: Basic.Properties) -> None:
    connection = await aiormq.connect(url)
    try:
        channel = await connection.channel()
        await channel.basic_publish(body, routing_key=queue, properties=properties)
    finally:
        await connection.close()


@pytest.fixture
async def api_consumer(broker_url, namespace) -> AsyncIterator[tuple[AsyncBus, AsyncBus, Counter[str]]]:
    """A server bus consuming the namespace's API queue (echoing, or breaking its own connection
    on ``Breaks``) and a client bus; yields (client, server, deliveries by name)."""
    topo = Topology(namespace)
    server_name = f"poison-server-{namespace}"
    server = AsyncBus(broker_url, topo, process_name=server_name, reconnect_initial=0.05)
    client = AsyncBus(broker_url, topo, process_name=f"poison-client-{namespace}", default_timeout=10)
    await server.start()
    await client.start()
    await server.declare_queue(topo.dead_letter_queue)
    deliveries: Counter[str] = Counter()

    async def handler(env: Envelope) -> dict[str, object]:
        deliveries[env.name] += 1
        if env.name == "Breaks":
            # What a message that crashes its consumer looks like from the broker: the connection
            # dies with the delivery unsettled (the ack after it goes nowhere).
            count = server.connection_count
            assert await asyncio.to_thread(infra.close_connections, server_name) == 1
            await server.wait_connections(count + 1, 30)
        return {"echo": env.body}

    await server.start_consumer(server.consume(topo.api_queue, handler, prefetch=16))
    yield client, server, deliveries
    await client.close()
    await server.close()


async def _dead_letters(bus: AsyncBus, namespace: str) -> asyncio.Queue[DeliveredMessage]:
    """The dead-letter queue's messages as they arrive (consumed: the queue is the namespace's)."""
    arrived: asyncio.Queue[DeliveredMessage] = asyncio.Queue()

    async def collect(message: DeliveredMessage) -> None:
        await arrived.put(message)

    await bus.start_consumer(bus.consume_raw(Topology(namespace).dead_letter_queue, collect))
    return arrived


async def test_a_message_that_breaks_its_consumer_is_dead_lettered_after_the_delivery_limit(
    api_consumer, broker_url, namespace
):
    client, server, deliveries = api_consumer
    topo = Topology(namespace)
    dead = await _dead_letters(client, namespace)
    poison = Envelope(name="Breaks", kind="api", body={"n": 1}, reply_to=client.reply_queue)
    await client.send(topo.api_queue.name, poison, persistent=True)

    message = await asyncio.wait_for(dead.get(), 60)
    assert Envelope.decode(message.body).id == poison.id
    headers: dict[str, Any] = dict(message.header.properties.headers or {})
    (death,) = headers["x-death"]
    assert death["reason"] == "delivery_limit" and death["queue"] == topo.api_queue.name
    # Taken once, then returned POISON_DELIVERY_LIMIT times (each time breaking the connection).
    assert deliveries["Breaks"] == POISON_DELIVERY_LIMIT + 1
    await server.wait_connections(POISON_DELIVERY_LIMIT + 2, 30)
    # The consumer is back and answers; the poison message is gone from the queue.
    assert await client.call(topo.api_queue.name, "Echo", {"after": "poison"}) == {
        "echo": {"after": "poison"}
    }
    assert deliveries["Breaks"] == POISON_DELIVERY_LIMIT + 1
    assert infra.queue_depth(topo.api_queue.name) == 0


# (Header fields of a type no decoder knows are refused by RabbitMQ itself: it closes the
# publisher's connection with INTERNAL_ERROR, so they never reach a consumer.)
@pytest.mark.parametrize("depth", [100, 1200, 20_000])
async def test_properties_no_decoder_can_read_do_not_drop_the_connection(
    api_consumer, broker_url, namespace, depth
):
    client, server, deliveries = api_consumer
    topo = Topology(namespace)
    answered = client.expect_reply("raw-props")
    env = {"id": "raw-props", "name": "Odd", "kind": "api", "body": {"k": 1}}
    properties = RawProperties(nested_header(depth), "raw-props", client.reply_queue)
    await publish_raw_properties(broker_url, topo.api_queue.name, orjson.dumps(env), properties)
    # The envelope (in the body) is intact: answered, addressed by the envelope's id. Properties
    # that could not be read count as absent, reply_to among them: then only the second is answered.
    env["reply_to"] = client.reply_queue
    await publish_raw_properties(broker_url, topo.api_queue.name, orjson.dumps(env), properties)
    assert (await asyncio.wait_for(answered, 10)).body == {"echo": {"k": 1}}
    assert deliveries["Odd"] == 2
    assert server.connection_count == 1


async def test_a_queue_deleted_under_its_consumer_is_consumed_again(api_consumer, namespace):
    client, server, _ = api_consumer
    queue = Topology(namespace).api_queue.name
    with kombu.Connection(infra.BROKER_URL) as conn:
        conn.default_channel.queue_delete(queue)

    async def answered() -> bool:
        return await client.call(queue, "Echo", {"back": True}, timeout=2) == {"echo": {"back": True}}

    # Unroutable (SYS.UNAVAILABLE at once) until the consumer has declared its queue again.
    await until(answered, 20, "the consumer to declare and consume its deleted queue again")
    assert server.connection_count == 1


async def test_the_api_queue_of_an_earlier_release_is_served_too(broker_url, namespace):
    """Rolling upgrade: clients of the earlier release publish to ``<ns>.api`` (a classic queue,
    which cannot be redeclared as a quorum queue); nodes of this release answer them there too."""
    topo = Topology(namespace)
    (old_name,) = topo.api_queue.previous
    old = QueueSpec(
        old_name, durable=True, arguments={"x-dead-letter-exchange": topo.dead_letter_exchange.name}
    )
    server = AsyncBus(broker_url, topo, process_name=f"upgraded-{namespace}")
    client = AsyncBus(broker_url, topo, process_name=f"old-client-{namespace}", default_timeout=10)
    await client.start()
    try:
        await client.declare_queue(old)

        async def echo(env: Envelope) -> dict[str, object]:
            return {"echo": env.body}

        await server.start()
        await server.start_consumer(server.consume(topo.api_queue, echo))
        assert await client.call(old_name, "Echo", {"old": 1}) == {"echo": {"old": 1}}
        assert await client.call(topo.api_queue.name, "Echo", {"new": 1}) == {"echo": {"new": 1}}
        # Deleting the old queue ends the upgrade; the consumer of the new one goes on.
        with kombu.Connection(infra.BROKER_URL) as conn:
            conn.default_channel.queue_delete(old_name)
        assert await client.call(topo.api_queue.name, "Echo", {"new": 2}) == {"echo": {"new": 2}}
        assert server.connection_count == 1
    finally:
        with kombu.Connection(infra.BROKER_URL) as conn:
            conn.default_channel.queue_delete(old_name)
        await client.close()
        await server.close()
