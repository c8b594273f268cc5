"""The synchronous client on kombu, with the async bus's call surface, for the CLI and outside programs.

It holds one connection and one exclusive reply queue. A call publishes with publisher confirms and
mandatory routing (so "nobody consumes that queue" is an immediate ``SYS.UNAVAILABLE``, not a
timeout), then drains replies until its own arrives or its deadline passes (``SYS.TIMEOUT``). When
the connection breaks, the call in flight fails with ``SYS.CONNECTION_LOST`` and the next call
reconnects. An idle connection the broker closed meanwhile (a broker restart, a forced close) is
noticed before publishing, and a publish that fails on a dead connection is retried once on a new
one within the call's deadline, so the first call after a restart succeeds.

With an access key's broker user (``<ns>.key.<id>`` in the URL, see ``bus.credentials``) the client
declares nothing but its own ``<ns>.reply.<id>.*`` reply queue: that user may not declare exchanges
nor bind to the replies exchange, and needs neither (API replies come through the default exchange).

Only the reply the client is waiting for is kept: late, duplicate and unmatched replies are counted
(``dropped_replies``) and dropped, so their memory is bounded.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

import amqp.exceptions
import kombu
import kombu.exceptions
from kombu.message import Message as KombuMessage

from bus.credentials import login_of
from bus.envelope import Envelope, new_uuid
from bus.errors import RingstackError, Sys
from bus.topology import QueueSpec, Topology

log = logging.getLogger(__name__)

_CONNECTION_ERRORS = (
    OSError,
    amqp.exceptions.ConnectionError,
    amqp.exceptions.RecoverableConnectionError,
    kombu.exceptions.OperationalError,
)
NO_ROUTE = 312


class SyncClient:
    def __init__(
        self,
        url: str,
        topology: Topology | None = None,
        *,
        default_timeout: float = 30.0,
        connect_timeout: float = 5.0,
        max_message_bytes: int = 1 << 20,
        process_name: str = "ringstack-client",
    ) -> None:
        self.url = url
        self.topology = topology or Topology()
        self.default_timeout = default_timeout
        self.connect_timeout = connect_timeout
        self.max_message_bytes = max_message_bytes
        self.process_name = process_name
        # Sent as every message's user_id (RabbitMQ checks it; see ``Topology.may_answer``).
        self.broker_user = login_of(url)
        # An access key's user (an API client fenced at the broker) or a node/bootstrap user.
        self.client_key = self.topology.client_key_of(self.broker_user)
        self._reply_spec = (
            self.topology.client_reply_queue(self.client_key, new_uuid())
            if self.client_key
            else self.topology.reply_queue(new_uuid())
        )
        self._conn: kombu.Connection | None = None
        self._channel: Any = None
        self._producer: kombu.Producer | None = None
        # One call at a time: the id awaited and, once it came, its reply.
        self._awaiting: str | None = None
        self._reply: Envelope | None = None
        self.dropped_replies = 0
        self._returned: list[str] = []

    # ------------------------------------------------------------------ connection

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        conn, self._conn = self._conn, None
        self._channel = self._producer = None
        if conn is not None:
            with contextlib.suppress(*_CONNECTION_ERRORS):
                conn.release()

    def _connect(self, deadline: float) -> None:
        if self._conn is not None and self._conn.connected and self._alive(self._conn):
            return
        self.close()
        conn = kombu.Connection(
            self.url,
            connect_timeout=min(self.connect_timeout, max(0.1, deadline - time.time())),
            transport_options={
                "confirm_publish": True,
                "client_properties": {"connection_name": self.process_name},
            },
            heartbeat=0,
        )
        try:
            conn.connect()
            channel = conn.default_channel
            channel.events["basic_return"].add(self._on_return)  # type: ignore[attr-defined]
            if not self.client_key:
                for spec in self.topology.exchanges():
                    channel.exchange_declare(spec.name, spec.type, durable=spec.durable, auto_delete=False)
            reply = _kombu_queue(self._reply_spec, channel)
            reply.declare()
            for exchange, key in self._reply_spec.bindings:
                channel.queue_bind(queue=self._reply_spec.name, exchange=exchange, routing_key=key)
            consumer = kombu.Consumer(channel, queues=[reply], no_ack=True, on_message=self._on_reply)
            consumer.consume()
        except _CONNECTION_ERRORS as exc:
            conn.release()
            raise RingstackError(
                Sys.UNAVAILABLE, f"cannot reach the broker at {_safe_url(self.url)}: {exc}"
            ) from None
        except amqp.exceptions.AccessRefused as exc:
            conn.release()
            raise RingstackError(
                Sys.PERMISSION_DENIED, f"the broker refused {_safe_url(self.url)}: {exc}"
            ) from None
        self._conn, self._channel = conn, channel
        self._producer = kombu.Producer(channel)

    def _alive(self, conn: kombu.Connection) -> bool:
        """Read what the broker sent while we were idle: with no heartbeats, a close or reset shows
        only here, and publishing into the dead socket would fail the call."""
        try:
            conn.drain_events(timeout=0)
        except TimeoutError:
            return True
        except (*_CONNECTION_ERRORS, amqp.exceptions.AMQPError):
            return False
        return True

    def _on_return(self, exc: Exception, exchange: str, routing_key: str, message: Any) -> None:
        self._returned.append(routing_key)

    def _on_reply(self, message: KombuMessage) -> None:
        try:
            env = Envelope.decode(message.body)
        except RingstackError as exc:
            log.warning("unreadable reply dropped: %s", exc.message)
            return
        if env.correlation_id is not None and env.correlation_id == self._awaiting and self._reply is None:
            self._reply = env
        else:
            self.dropped_replies += 1

    # ------------------------------------------------------------------ sending

    def _publish(
        self, exchange: str, routing_key: str, env: Envelope, *, persistent: bool, mandatory: bool
    ) -> None:
        body = env.encode()
        if len(body) > self.max_message_bytes:
            raise RingstackError(
                Sys.MESSAGE_TOO_LARGE,
                f"message of {len(body)} bytes exceeds the limit of {self.max_message_bytes}",
            )
        deadline = env.deadline or time.time() + self.default_timeout
        self._connect(deadline)
        assert self._producer is not None
        properties: dict[str, Any] = {
            "message_id": env.id,
            "correlation_id": env.correlation_id or env.id,
            "type": env.name,
            "user_id": self.broker_user,
        }
        if env.reply_to:
            properties["reply_to"] = env.reply_to
        if env.deadline is not None and env.kind != "event":
            properties["expiration"] = max(1.0, env.deadline - time.time())
        self._returned.clear()
        try:
            self._producer.publish(
                body,
                exchange=exchange,
                routing_key=routing_key,
                content_type="application/json",
                content_encoding="utf-8",
                delivery_mode=2 if persistent else 1,
                mandatory=mandatory,
                retry=False,
                **properties,
            )
        except amqp.exceptions.MessageNacked:
            raise RingstackError(
                Sys.UNAVAILABLE, f"the broker refused the message for {routing_key!r}"
            ) from None
        except amqp.exceptions.NotFound:
            # The API entry exchange is declared by the nodes: none has ever run in this namespace.
            self.close()
            raise RingstackError(
                Sys.UNAVAILABLE, f"{exchange!r} does not exist; has a management node run here?"
            ) from None
        except amqp.exceptions.AccessRefused as exc:
            self.close()
            raise RingstackError(Sys.PERMISSION_DENIED, f"the broker refused the message: {exc}") from None
        except _CONNECTION_ERRORS as exc:
            self.close()
            raise RingstackError(Sys.CONNECTION_LOST, f"publish failed: {exc}") from None
        if self._returned:
            raise RingstackError(
                Sys.UNAVAILABLE,
                f"no queue is bound for {routing_key!r}; is its consumer running?",
                details={"routing_key": routing_key},
            )

    def call(
        self,
        queue: str,
        name: str,
        body: dict[str, Any] | None = None,
        *,
        kind: str = "call",
        resource_uuid: str | None = None,
        session: str | None = None,
        timeout: float | None = None,
        persistent: bool = False,
    ) -> dict[str, Any]:
        """Send a request and return the reply body; remote errors are raised."""
        env = Envelope(
            name=name,
            kind=kind,
            body=body or {},
            resource_uuid=resource_uuid,
            session=session,
            deadline=time.time() + (self.default_timeout if timeout is None else timeout),
        )
        return self.call_envelope(queue, env, persistent=persistent).raise_for_error()

    def api(
        self,
        name: str,
        body: dict[str, Any] | None = None,
        *,
        session: str | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Call an API through the shared API queue (persistent: survives a broker restart)."""
        return self.call(
            self.topology.api_queue.name,
            name,
            body,
            kind="api",
            session=session,
            timeout=timeout,
            persistent=True,
        )

    def call_envelope(self, queue: str, env: Envelope, *, persistent: bool = False) -> Envelope:
        if env.deadline is None:
            env.deadline = time.time() + self.default_timeout
        env.reply_to = self._reply_spec.name
        self._awaiting, self._reply = env.id, None
        try:
            try:
                self._publish(*self.topology.route_to(queue), env, persistent=persistent, mandatory=True)
            except RingstackError as exc:
                # The connection died under the publish (it looked alive): once more on a new one.
                # Requests are idempotent by id (a job is keyed by it), so a copy that did arrive
                # does no harm.
                if exc.code != Sys.CONNECTION_LOST or env.deadline - time.time() <= 0:
                    raise
                self._publish(*self.topology.route_to(queue), env, persistent=persistent, mandatory=True)
            return self._wait_reply(env)
        finally:
            self._awaiting, self._reply = None, None

    def _wait_reply(self, env: Envelope) -> Envelope:
        assert env.deadline is not None
        while True:
            if self._reply is not None:
                return self._reply
            left = env.deadline - time.time()
            if left <= 0:
                raise RingstackError(
                    Sys.TIMEOUT, f"{env.name} got no reply before its deadline", details={"id": env.id}
                )
            assert self._conn is not None
            try:
                self._conn.drain_events(timeout=left)
            except TimeoutError:
                continue
            except _CONNECTION_ERRORS as exc:
                self.close()
                raise RingstackError(
                    Sys.CONNECTION_LOST, f"the broker connection was lost with {env.name} in flight: {exc}"
                ) from None

    def send(self, queue: str, env: Envelope, *, persistent: bool = False) -> None:
        """Deliver a message that expects no reply."""
        self._publish(*self.topology.route_to(queue), env, persistent=persistent, mandatory=True)

    def publish_event(self, routing_key: str, name: str, body: dict[str, Any]) -> None:
        env = Envelope(name=name, kind="event", body=body)
        self._publish(self.topology.events_exchange.name, routing_key, env, persistent=True, mandatory=False)


def _kombu_queue(spec: QueueSpec, channel: Any) -> kombu.Queue:
    return kombu.Queue(
        spec.name,
        channel=channel,
        durable=spec.durable,
        exclusive=spec.exclusive,
        auto_delete=spec.auto_delete,
        queue_arguments=spec.arguments or None,
        no_declare=False,
    )


def _safe_url(url: str) -> str:
    """The URL without its password, for error messages."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    creds, _, host = rest.rpartition("@")
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"
