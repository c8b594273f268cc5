"""The async bus on aio-pika: calls with deadlines, sends, events, and consumers that survive reconnects.

aio-pika opens the connection and declares queues; the per-message paths (publish, consume, ack)
use the aiormq channel underneath directly, because every microsecond there is CPU on the hot path.

One ``AsyncBus`` per process holds one broker connection. A supervisor task owns that connection:
it connects, declares the topology and every registered consumer, and when the connection (or any
of its channels) dies it fails the calls in flight with ``SYS.CONNECTION_LOST`` and starts again with
backoff. Calls made while disconnected wait for the connection until their deadline.

Channels: ``confirm`` (publisher confirms + mandatory routing) for requests and events, which must
not be lost silently; ``fast`` (no confirms) for replies, whose loss the caller's deadline covers;
one channel per consumer so each has its own prefetch window and can be cancelled alone.

An API client connecting as an access key's broker user (``<ns>.key.<id>``, see ``bus.credentials``)
declares no exchanges and uses ``<ns>.reply.<id>.<uuid>`` as its reply queue: the only queues that
user may touch; its event subscriptions are ``Topology.client_event_queue``. Every message carries
the connection's user as ``user_id``, and a consumer answers a request only into a reply address
its sender may ask for (``Topology.may_answer``, in bus/topology.py's module doc).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractQueue
from aio_pika.connection import make_url
from aiormq.abc import DeliveredMessage
from aiormq.exceptions import PublishError
from pamqp.commands import Basic

from bus import amqp_decode
from bus.credentials import login_of
from bus.envelope import MAX_NAME_LENGTH, Envelope, is_short_str, is_token, new_uuid
from bus.errors import RingstackError, Sys
from bus.topology import QueueSpec, Topology

log = logging.getLogger(__name__)

# Properties that are not UTF-8 must not be able to break the connection (see bus.amqp_decode).
amqp_decode.install()

DEFAULT_MAX_MESSAGE_BYTES: Final = 1 << 20


class _NoReply:
    """Returned by a handler that has arranged for someone else to reply (e.g. it forwarded)."""

    __repr__ = lambda self: "NO_REPLY"  # noqa: E731


NO_REPLY: Final = _NoReply()

HandlerResult = dict[str, Any] | None | _NoReply
Handler = Callable[[Envelope], Awaitable[HandlerResult]]
# For messages that are not ringstack envelopes (e.g. the broker's own event exchange).
RawHandler = Callable[[DeliveredMessage], Awaitable[None]]


@dataclass(eq=False)
class Consumer:
    """A registered consumer; it is re-established after every reconnect until cancelled."""

    spec: QueueSpec
    handler: Handler | None
    prefetch: int
    no_ack: bool = False
    raw_handler: RawHandler | None = None
    cancelled: bool = False
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _channel: aiormq.abc.AbstractChannel | None = None
    _tag: str | None = None
    _declarer: AbstractChannel | None = None
    # (channel, consumer tag) on each of the spec's previous queues that existed at connect
    _previous: list[tuple[aiormq.abc.AbstractChannel, str | None]] = field(default_factory=list)

    @property
    def in_flight(self) -> int:
        return len(self.tasks)

    async def drain(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for the messages being handled; True when none is left."""
        if not self.tasks:
            return True
        _, pending = await asyncio.wait(set(self.tasks), timeout=timeout)
        return not pending


class AsyncBus:
    def __init__(
        self,
        url: str,
        topology: Topology | None = None,
        *,
        process_name: str = "ringstack",
        default_timeout: float = 30.0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        declare_topology: bool = True,
        reply_exchange: str = "",
        reconnect_initial: float = 0.1,
        reconnect_max: float = 5.0,
    ) -> None:
        self.url = url
        self.topology = topology or Topology()
        self.process_name = process_name
        self.process_uuid = new_uuid()
        self.default_timeout = default_timeout
        self.max_message_bytes = max_message_bytes
        # Sent as every message's user_id (RabbitMQ checks it; see ``Topology.may_answer``).
        self.broker_user = login_of(url)
        # An access key's user (an API client fenced at the broker) may not declare exchanges.
        self.client_key = self.topology.client_key_of(self.broker_user)
        self.declare_topology = declare_topology and not self.client_key
        # Where replies are published: the default exchange, or (agents) the replies exchange.
        self.reply_exchange = reply_exchange
        self._reconnect_initial = reconnect_initial
        self._reconnect_max = reconnect_max

        self._reply_queue = (
            self.topology.client_reply_queue(self.client_key, self.process_uuid)
            if self.client_key
            else self.topology.reply_queue(self.process_uuid)
        )
        self._pending: dict[str, asyncio.Future[Envelope]] = {}
        self._consumers: list[Consumer] = []
        self._connected = asyncio.Event()
        self._closing = False
        self._close_requested = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        self._connection: AbstractConnection | None = None
        self._lost: asyncio.Future[None] | None = None
        self._confirm: aiormq.abc.AbstractChannel | None = None
        self._fast: aiormq.abc.AbstractChannel | None = None
        self._declarer: AbstractChannel | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._connection_waiters: list[asyncio.Future[None]] = []
        self.connection_count = 0  # how many times a connection was established; tests watch it

    # ------------------------------------------------------------------ lifecycle

    async def start(self, timeout: float = 30.0) -> None:
        """Start the supervisor and wait until the first connection is up."""
        if self._supervisor is None:
            self._supervisor = asyncio.create_task(self._supervise(), name=f"bus-{self.process_name}")
        try:
            await asyncio.wait_for(self._connected.wait(), timeout)
        except TimeoutError:
            raise RingstackError(
                Sys.UNAVAILABLE, f"could not connect to the broker within {timeout} s"
            ) from None

    async def close(self) -> None:
        self._closing = True
        self._close_requested.set()
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)
        if self._supervisor is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
            self._supervisor = None
        self._fail_pending(RingstackError(Sys.SHUTTING_DOWN, "the bus was closed"))

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self, timeout: float) -> None:
        await asyncio.wait_for(self._connected.wait(), timeout)

    async def wait_connections(self, count: int, timeout: float) -> None:
        """Wait until the bus has connected ``count`` times in all (the first connection is 1) and
        is connected now, every registered consumer started again; TimeoutError after ``timeout``."""

        async def reached() -> None:
            while self.connection_count < count or not self._connected.is_set():
                waiter = asyncio.get_running_loop().create_future()
                self._connection_waiters.append(waiter)
                await waiter

        await asyncio.wait_for(reached(), timeout)

    async def _supervise(self) -> None:
        backoff = self._reconnect_initial
        while not self._closing:
            try:
                await self._connect()
            except Exception as exc:
                log.warning(
                    "%s: broker connection failed: %s; retrying in %.1f s", self.process_name, exc, backoff
                )
                await self._drop_connection()
                await self._sleep_unless_closing(backoff)
                backoff = min(backoff * 2, self._reconnect_max)
                continue
            backoff = self._reconnect_initial
            self.connection_count += 1
            self._connected.set()
            waiters, self._connection_waiters = self._connection_waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)
            assert self._lost is not None
            await self._lost
            self._connected.clear()
            if not self._closing:
                log.warning("%s: broker connection lost; reconnecting", self.process_name)
            self._fail_pending(
                RingstackError(Sys.CONNECTION_LOST, "the broker connection was lost with the call in flight")
            )
            await self._drop_connection()

    async def _sleep_unless_closing(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._close_requested.wait(), seconds)

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        self._lost = loop.create_future()
        # Not aio_pika.connect(): when connecting fails it drops a Connection that is not closed,
        # whose __del__ later makes a close() coroutine it cannot run when collected off the loop
        # ("coroutine 'Connection.close' was never awaited"). Ours is closed on every failure.
        conn = aio_pika.Connection(
            make_url(self.url), client_properties={"connection_name": self.process_name}
        )
        self._connection = conn
        await conn.connect()
        conn.close_callbacks.add(self._on_closed)
        confirm = await conn.channel(publisher_confirms=True, on_return_raises=True)
        fast = await conn.channel(publisher_confirms=False)
        for ch in (confirm, fast):
            ch.close_callbacks.add(self._on_closed)
        self._declarer = confirm
        if self.declare_topology:
            for spec in self.topology.exchanges():
                await confirm.declare_exchange(spec.name, spec.type, durable=spec.durable)
        await self._declare_queue(fast, self._reply_queue)
        self._confirm = await confirm.get_underlay_channel()
        self._fast = await fast.get_underlay_channel()
        await self._fast.basic_consume(self._reply_queue.name, self._on_reply, no_ack=True)
        for consumer in self._consumers:
            if not consumer.cancelled:
                await self._start_consumer(consumer)

    def _on_closed(self, *_: Any) -> None:
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)

    async def _drop_connection(self) -> None:
        conn, self._connection = self._connection, None
        self._confirm = self._fast = None
        self._declarer = None
        for consumer in self._consumers:
            consumer._channel = None
            consumer._tag = None
            consumer._declarer = None
            consumer._previous = []
        if conn is not None and not conn.is_closed:
            with contextlib.suppress(Exception):
                await conn.close()

    def _fail_pending(self, error: RingstackError) -> None:
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(error)

    async def _declare_queue(self, channel: AbstractChannel, spec: QueueSpec) -> AbstractQueue:
        queue = await channel.declare_queue(
            spec.name,
            durable=spec.durable,
            exclusive=spec.exclusive,
            auto_delete=spec.auto_delete,
            arguments=spec.arguments or None,
        )
        for exchange, key in spec.bindings:
            await queue.bind(exchange, key)
        return queue

    async def declare_queue(self, spec: QueueSpec) -> None:
        """Declare a queue (and its bindings) without consuming it, e.g. the shared API queue."""
        await self._ready(time.time() + self.default_timeout)
        assert self._declarer is not None
        await self._declare_queue(self._declarer, spec)

    # ------------------------------------------------------------------ sending

    async def _ready(self, deadline: float) -> None:
        if self._connected.is_set():
            return
        if self._closing:
            raise RingstackError(Sys.SHUTTING_DOWN, "the bus was closed")
        try:
            await asyncio.wait_for(self._connected.wait(), max(0.0, deadline - time.time()))
        except TimeoutError:
            raise RingstackError(Sys.UNAVAILABLE, "no broker connection before the deadline") from None

    def _message(
        self, env: Envelope, *, persistent: bool = False, expire: bool = True
    ) -> tuple[bytes, Basic.Properties]:
        body = env.encode()
        if len(body) > self.max_message_bytes:
            raise RingstackError(
                Sys.MESSAGE_TOO_LARGE,
                f"message of {len(body)} bytes exceeds the limit of {self.max_message_bytes}",
            )
        expiration = None
        if expire and env.deadline is not None:
            # The broker drops (dead-letters) a request nobody took before its deadline.
            expiration = str(max(1, int((env.deadline - time.time()) * 1000)))
        return body, Basic.Properties(
            content_type="application/json",
            message_id=env.id,
            correlation_id=env.correlation_id or env.id,
            reply_to=env.reply_to,
            message_type=env.name,
            user_id=self.broker_user,
            expiration=expiration,
            delivery_mode=2 if persistent else 1,
        )

    async def _publish_confirmed(
        self,
        exchange: str,
        routing_key: str,
        message: tuple[bytes, Basic.Properties],
        *,
        mandatory: bool = True,
        deadline: float | None = None,
    ) -> None:
        channel = self._confirm
        if channel is None:
            raise RingstackError(Sys.CONNECTION_LOST, "the broker connection was lost")
        body, properties = message
        # Bounded: a broker that stops confirming (flow control, a stuck socket) must turn into an
        # error for the caller, never an await that lasts forever.
        timeout = max(0.1, (deadline or time.time() + self.default_timeout) - time.time())
        try:
            await channel.basic_publish(
                body,
                exchange=exchange,
                routing_key=routing_key,
                properties=properties,
                mandatory=mandatory,
                timeout=timeout,
            )
        except TimeoutError:
            raise RingstackError(
                Sys.TIMEOUT, f"the broker did not confirm the message for {routing_key!r} in time"
            ) from None
        except PublishError:
            raise RingstackError(
                Sys.UNAVAILABLE,
                f"no queue is bound for {routing_key!r}; is its consumer running?",
                details={"routing_key": routing_key},
            ) from None
        except (aiormq.exceptions.AMQPError, ConnectionError, RuntimeError) as exc:
            raise RingstackError(Sys.CONNECTION_LOST, f"publish failed: {exc}") from None

    async def call(
        self,
        queue: str,
        name: str,
        body: dict[str, Any] | None = None,
        *,
        kind: str = "call",
        resource_uuid: str | None = None,
        session: str | None = None,
        service: str | None = None,
        timeout: float | None = None,
        persistent: bool = False,
    ) -> dict[str, Any]:
        """Send a request to ``queue`` and return the reply body; remote errors are raised."""
        deadline = time.time() + (self.default_timeout if timeout is None else timeout)
        env = Envelope(
            name=name,
            kind=kind,
            body=body or {},
            resource_uuid=resource_uuid,
            session=session,
            service=service,
            deadline=deadline,
        )
        reply = await self.call_envelope(queue, env, persistent=persistent)
        return reply.raise_for_error()

    async def api(
        self,
        name: str,
        body: dict[str, Any] | None = None,
        *,
        session: str | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Call an API through the shared API queue (persistent: survives a broker restart)."""
        return await self.call(
            self.topology.api_queue.name,
            name,
            body,
            kind="api",
            session=session,
            timeout=timeout,
            persistent=True,
        )

    async def call_envelope(self, queue: str, env: Envelope, *, persistent: bool = False) -> Envelope:
        """Send a prepared request envelope and wait for its reply envelope (errors are not raised)."""
        if env.deadline is None:
            env.deadline = time.time() + self.default_timeout
        await self._ready(env.deadline)
        env.reply_to = self._reply_queue.name
        message = self._message(env, persistent=persistent)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Envelope] = loop.create_future()
        self._pending[env.id] = fut
        timer = loop.call_later(max(0.0, env.deadline - time.time()), _expire, fut, env)
        try:
            await self._publish_confirmed(*self.topology.route_to(queue), message, deadline=env.deadline)
            return await fut
        finally:
            timer.cancel()
            self._pending.pop(env.id, None)

    @property
    def reply_queue(self) -> str:
        """The queue this process's replies arrive on (a request's ``reply_to``)."""
        return self._reply_queue.name

    def expect_reply(self, correlation_id: str) -> asyncio.Future[Envelope]:
        """A future for the reply to a request sent some other way (a raw AMQP publish with
        ``reply_to=self.reply_queue``), matched by correlation id like a ``call``'s own."""
        fut: asyncio.Future[Envelope] = asyncio.get_running_loop().create_future()
        self._pending[correlation_id] = fut
        return fut

    @property
    def awaiting_replies(self) -> int:
        """Requests still waiting for their reply."""
        return len(self._pending)

    async def send(self, queue: str, env: Envelope, *, persistent: bool = False) -> None:
        """Deliver a message that expects no reply; confirmed by the broker."""
        await self._ready(env.deadline or time.time() + self.default_timeout)
        await self._publish_confirmed(
            *self.topology.route_to(queue), self._message(env, persistent=persistent)
        )

    async def publish_event(self, routing_key: str, name: str, body: dict[str, Any]) -> None:
        """Publish on the events exchange; confirmed, but no subscriber is needed."""
        env = Envelope(name=name, kind="event", body=body)
        await self.publish(self.topology.events_exchange.name, routing_key, env, persistent=True)

    async def publish(
        self, exchange: str, routing_key: str, env: Envelope, *, persistent: bool = False
    ) -> None:
        """Publish to an exchange with confirms; unroutable is fine (nobody subscribed)."""
        await self._ready(time.time() + self.default_timeout)
        await self._publish_confirmed(
            exchange, routing_key, self._message(env, persistent=persistent, expire=False), mandatory=False
        )

    async def reply(self, reply_to: str, reply: Envelope) -> None:
        """Answer a request; unconfirmed: if it is lost the caller's deadline covers it. Never raises:
        whatever goes wrong is one log line, and the caller goes on to settle the request."""
        channel = self._fast
        if channel is None:
            log.info("%s: reply %s dropped: not connected", self.process_name, reply.correlation_id)
            return
        if not is_short_str(reply_to) or not (
            reply.correlation_id is None or is_short_str(reply.correlation_id)
        ):
            # Addresses are checked where requests come in; this is the last line for any other path.
            log.warning("%s: reply %r dropped: unusable address", self.process_name, reply.correlation_id)
            return
        try:
            body = reply.encode()
            if len(body) > self.max_message_bytes:
                too_large = RingstackError(
                    Sys.MESSAGE_TOO_LARGE,
                    f"the reply of {len(body)} bytes exceeds the limit of {self.max_message_bytes}",
                )
                body = Envelope(
                    name=reply.name,
                    kind="reply",
                    correlation_id=reply.correlation_id,
                    error=too_large.to_wire(),
                ).encode()
            properties = Basic.Properties(
                content_type="application/json", correlation_id=reply.correlation_id, message_type=reply.name
            )
            await channel.basic_publish(
                body,
                exchange=self.reply_exchange,
                routing_key=reply_to,
                properties=properties,
                timeout=self.default_timeout,
            )
        except (aiormq.exceptions.AMQPError, ConnectionError, RuntimeError, TimeoutError) as exc:
            log.info("%s: reply %s dropped: %s", self.process_name, reply.correlation_id, exc)
        except (TypeError, ValueError) as exc:  # the body would not encode, or pamqp refused a value
            log.warning("%s: reply %s dropped: %s", self.process_name, reply.correlation_id, exc)

    async def _on_reply(self, message: DeliveredMessage) -> None:
        try:
            env = Envelope.decode(message.body)
        except RingstackError as exc:
            log.warning("%s: unreadable reply dropped: %s", self.process_name, exc.message)
            return
        fut = self._pending.get(env.correlation_id or "")
        if fut is not None and not fut.done():
            fut.set_result(env)

    # ------------------------------------------------------------------ consuming

    def consume(self, spec: QueueSpec, handler: Handler, *, prefetch: int = 256) -> Consumer:
        """Register a consumer; it starts now if connected, and again after every reconnect."""
        consumer = Consumer(spec=spec, handler=handler, prefetch=prefetch)
        self._consumers.append(consumer)
        return consumer

    def consume_raw(self, spec: QueueSpec, handler: RawHandler, *, prefetch: int = 64) -> Consumer:
        """Like ``consume`` for messages that are not envelopes; the handler gets the raw delivery
        and the message is acked after it returns (or raises, which is logged)."""
        consumer = Consumer(spec=spec, handler=None, raw_handler=handler, prefetch=prefetch)
        self._consumers.append(consumer)
        return consumer

    async def exchange_exists(self, name: str) -> bool:
        """Whether an exchange exists, checked on a throwaway channel (a failed passive declare
        closes its channel, which must not be one of ours)."""
        await self._ready(time.time() + self.default_timeout)
        assert self._connection is not None
        channel = await self._connection.channel(publisher_confirms=False)
        try:
            await channel.declare_exchange(name, passive=True)
            return True
        except aiormq.exceptions.ChannelNotFoundEntity:
            return False
        finally:
            with contextlib.suppress(Exception):
                await channel.close()

    async def start_consumer(self, consumer: Consumer) -> None:
        """Start a registered consumer on the live connection (or leave it to the next connect)."""
        if self._connected.is_set() and consumer._tag is None:
            await self._start_consumer(consumer)

    async def _start_consumer(self, consumer: Consumer) -> None:
        assert self._connection is not None
        channel = await self._connection.channel(publisher_confirms=False)
        channel.close_callbacks.add(self._on_closed)
        await channel.set_qos(prefetch_count=consumer.prefetch)
        raw = await channel.get_underlay_channel()
        raw.on_consumer_cancel_callbacks.add(functools.partial(self._on_broker_cancel, consumer))
        consumer._declarer = channel
        consumer._channel = raw
        await self._consume(consumer)
        for name in consumer.spec.previous:
            await self._consume_previous(consumer, name)

    async def _consume(self, consumer: Consumer) -> None:
        assert consumer._declarer is not None and consumer._channel is not None
        await self._declare_queue(consumer._declarer, consumer.spec)
        ok = await consumer._channel.basic_consume(
            consumer.spec.name, functools.partial(self._deliver, consumer), no_ack=consumer.no_ack
        )
        consumer._tag = ok.consumer_tag

    async def _consume_previous(self, consumer: Consumer, name: str) -> None:
        """Consume a queue an earlier release declared, if it still exists: its messages are answered
        like the current queue's. Checked passively, on a channel of its own (a failed passive
        declare closes its channel), and never created."""
        assert self._connection is not None
        channel = await self._connection.channel(publisher_confirms=False)
        try:
            await channel.declare_queue(name, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            with contextlib.suppress(Exception):
                await channel.close()
            return
        channel.close_callbacks.add(self._on_closed)
        await channel.set_qos(prefetch_count=consumer.prefetch)
        raw = await channel.get_underlay_channel()
        ok = await raw.basic_consume(name, functools.partial(self._deliver, consumer), no_ack=consumer.no_ack)
        log.info("%s: also consuming %s, left by an earlier release", self.process_name, name)
        consumer._previous.append((raw, ok.consumer_tag))

    async def _on_broker_cancel(self, consumer: Consumer, frame: Basic.Cancel) -> None:
        """The broker cancelled a consumer (its queue was deleted, or a quorum queue lost its
        members): consume again, declaring the queue anew, so the process never stays alive but
        deaf. The previous queues of an earlier release are let go: deleting them ends the upgrade."""
        if consumer.cancelled or self._closing or frame.consumer_tag != consumer._tag:
            return
        consumer._tag = None
        log.warning(
            "%s: the broker cancelled the consumer of %s; consuming again",
            self.process_name,
            consumer.spec.name,
        )
        self._spawn(self._reconsume(consumer))

    async def _reconsume(self, consumer: Consumer) -> None:
        channel = consumer._channel
        try:
            await self._consume(consumer)
        except Exception as exc:
            # Whatever failed (the declare closed the channel, the connection is going): the next
            # connection starts every consumer anew.
            log.warning(
                "%s: consuming %s again failed: %s; reconnecting", self.process_name, consumer.spec.name, exc
            )
            if consumer._channel is channel:
                self._on_closed()

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(self._observe)

    async def cancel(self, consumer: Consumer) -> None:
        """Stop taking new messages on this consumer; the ones being handled go on (see drain)."""
        consumer.cancelled = True
        taken = [(consumer._channel, consumer._tag), *consumer._previous]
        consumer._tag = None
        consumer._previous = []
        for channel, tag in taken:
            if channel is not None and tag is not None:
                with contextlib.suppress(Exception):
                    await channel.basic_cancel(tag)

    async def _deliver(self, consumer: Consumer, message: DeliveredMessage) -> None:
        # Our own task, not aiormq's: a dying channel cancels aiormq's consumer tasks, and business
        # logic must not be cut off half-way because a reply could not be sent.
        task = asyncio.create_task(self._process(consumer, message))
        consumer.tasks.add(task)
        task.add_done_callback(consumer.tasks.discard)
        task.add_done_callback(self._observe)

    def _observe(self, task: asyncio.Task[None]) -> None:
        """No task exception goes unobserved: ``_process`` handles its own, so one here is a bug."""
        if not task.cancelled() and task.exception() is not None:
            log.error("%s: delivery task failed: %r", self.process_name, task.exception())

    async def _process(self, consumer: Consumer, message: DeliveredMessage) -> None:
        """Handle one delivery and settle it, whatever happens: an unsettled delivery holds one of
        the consumer's prefetch slots for as long as the connection lives."""
        channel = message.channel
        tag = int(message.delivery.delivery_tag or 0)  # type: ignore[union-attr]
        settle: Callable[[], Awaitable[Any]] = functools.partial(channel.basic_ack, tag)
        try:
            if consumer.cancelled:
                # Taken after we stopped: give it back so another consumer handles it.
                settle = functools.partial(channel.basic_reject, tag, requeue=True)
            elif consumer.raw_handler is not None:
                try:
                    await consumer.raw_handler(message)
                except Exception as exc:
                    log.error("%s: raw consumer of %s failed: %r", self.process_name, consumer.spec.name, exc)
            elif not await self._answer(consumer, message):
                settle = functools.partial(channel.basic_reject, tag, requeue=False)
        except asyncio.CancelledError:
            # The bus is closing: the broker redelivers what we have not finished.
            settle = functools.partial(channel.basic_reject, tag, requeue=True)
            raise
        except Exception:
            # A bug in the bus itself; the message is settled all the same, and the node goes on.
            log.exception("%s: delivery on %s failed", self.process_name, consumer.spec.name)
        finally:
            await _settle(settle())

    async def _answer(self, consumer: Consumer, message: DeliveredMessage) -> bool:
        """Decode, handle and answer one request. False when it should be dead-lettered instead."""
        assert consumer.handler is not None
        props = message.header.properties
        # AMQP properties come from anyone; one that is not valid text is treated as absent.
        prop_reply_to = _text_property(props.reply_to)
        env: Envelope | None = None
        error: RingstackError | None = None
        result: HandlerResult = None
        if len(message.body) > self.max_message_bytes:
            error = RingstackError(
                Sys.MESSAGE_TOO_LARGE,
                f"message of {len(message.body)} bytes exceeds the limit of {self.max_message_bytes}",
            )
        else:
            try:
                env = Envelope.decode(message.body)
            except RingstackError as exc:
                error = exc
        # The one rule for reply addresses (bus/envelope.py): the envelope's, else the property.
        if env is not None and env.reply_to is None:
            env.reply_to = prop_reply_to
        reply_to = env.reply_to if env is not None else prop_reply_to
        if reply_to and not self._may_answer(consumer, message, reply_to):
            return True
        if env is not None:
            if env.expired():
                error = RingstackError(Sys.TIMEOUT, "the deadline passed before the request was taken")
            else:
                try:
                    result = await consumer.handler(env)
                except RingstackError as exc:
                    error = exc
                except Exception:
                    log.exception("%s: handler for %s (id %s) failed", self.process_name, env.name, env.id)
                    error = RingstackError(
                        Sys.INTERNAL, f"internal error handling {env.name}; request id {env.id}"
                    )
        if result is NO_REPLY:
            return True
        reply_to = env.reply_to if env is not None else prop_reply_to  # the handler may clear it
        if reply_to:
            if env is not None:
                reply = env.reply(result if isinstance(result, dict) else None, error)
            else:
                reply = Envelope(
                    name=_token_property(props.message_type, MAX_NAME_LENGTH) or "unknown",
                    kind="reply",
                    correlation_id=_text_property(props.correlation_id) or _text_property(props.message_id),
                    error=error.to_wire() if error else None,
                )
            if error is not None:
                self._log_rejected(consumer, env, error, replied=True)
            await self.reply(reply_to, reply)
            return True
        if error is not None:
            self._log_rejected(consumer, env, error, replied=False)
            return error.code not in _DEAD_LETTER_CODES
        return True

    def _may_answer(self, consumer: Consumer, message: DeliveredMessage, reply_to: str) -> bool:
        """Whether the sender may have replies sent to ``reply_to`` (``Topology.may_answer``);
        when not, one warning: the request is then neither handled nor answered, only acked."""
        user_id = _text_property(message.header.properties.user_id)
        via_default = getattr(message.delivery, "exchange", None) == ""
        if self.topology.may_answer(reply_to, user_id, via_default_exchange=via_default):
            return True
        log.warning(
            "%s: request on %s from user %r dropped: it may not ask for replies into %r",
            self.process_name,
            consumer.spec.name,
            user_id,
            reply_to,
        )
        return False

    def _log_rejected(
        self, consumer: Consumer, env: Envelope | None, error: RingstackError, *, replied: bool
    ) -> None:
        """One line per message that failed, never its content (it may be huge or hostile)."""
        if error.code == Sys.INTERNAL:
            return  # already logged with its traceback: a bug, not bad input
        what = f"{env.name} (id {env.id})" if env is not None else "an unreadable message"
        if replied:
            log.info("%s: %s on %s: %s", self.process_name, what, consumer.spec.name, error.code)
        elif error.code in _DEAD_LETTER_CODES:
            log.warning("%s: dead-lettering %s on %s: %s", self.process_name, what, consumer.spec.name, error)
        else:
            log.warning("%s: %s failed with no one to tell: %s", self.process_name, what, error)


_DEAD_LETTER_CODES: Final = frozenset({Sys.MALFORMED_MESSAGE, Sys.UNKNOWN_MESSAGE, Sys.MESSAGE_TOO_LARGE})


def _expire(fut: asyncio.Future[Envelope], env: Envelope) -> None:
    if not fut.done():
        fut.set_exception(
            RingstackError(
                Sys.TIMEOUT, f"{env.name} got no reply before its deadline", details={"id": env.id}
            )
        )


async def _settle(op: Awaitable[Any]) -> None:
    """Ack/nack/reject, tolerating a channel that died meanwhile (the broker then requeues)."""
    with contextlib.suppress(aiormq.exceptions.AMQPError, ConnectionError, RuntimeError):
        await op


def _text_property(value: Any) -> str | None:
    """An AMQP string property we may use (in a reply, as a routing key), else None."""
    return value if value and is_short_str(value) else None


def _token_property(value: Any, max_length: int) -> str | None:
    return value if is_token(value, max_length) else None
