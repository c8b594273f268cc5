"""Every RabbitMQ exchange and queue ringstack uses, declared in one place.

Names are prefixed by a *namespace* (``ringstack`` in production) so that test runs and several
installations can share one broker without touching each other's queues.

| name | kind | purpose |
|---|---|---|
| ``<ns>.api.v2`` | quorum queue | API requests from clients; every node consumes it |
| ``<ns>.api-entry`` | direct exchange | how clients send API requests: bound only to ``<ns>.api.v2``, so a client that may publish here (an access key's broker user) can reach no other queue |
| ``<ns>.node.<node_uuid>`` | exclusive queue | calls routed to one management node |
| ``<ns>.agent.<host_uuid>`` | durable queue | commands to one agent (KVM host, virtual router) |
| ``<ns>.reply.<process_uuid>`` | exclusive queue | replies to one process's calls |
| ``<ns>.reply.<key>.<uuid>`` | exclusive queue | an API client's replies and event subscriptions; only access key ``<key>``'s broker user may declare, bind or read them |
| ``<ns>.replies`` | direct exchange | how agents reply: bound only to reply queues, so an agent that may publish here cannot reach any other queue |
| ``<ns>.agent-reports.v2`` | quorum queue | agents' reports (``agent.<host>.<report>`` on the events exchange); nodes share it |
| ``<ns>.membership`` | fanout exchange | join / heartbeat / leave broadcasts |
| ``<ns>.events`` | topic exchange | canonical events, e.g. ``zone.<uuid>.created`` |
| ``<ns>.account-events`` | topic exchange | the same resource events for API clients, keyed ``<account uuid>.<kind>.<uuid>.<action>`` (the owner's account); a client binds only under its own account (topic permissions) |
| ``<ns>.dead-letter`` | fanout exchange + queue | messages no one could answer, kept for inspection |

Messages to queues go through the default exchange with the queue name as routing key, except API
requests, which go through ``<ns>.api-entry`` (``route_to``). API clients with an access key get
a broker user that may publish only there, read only its own ``<ns>.reply.<key>.*`` queues and bind
them only to its own account's events (``mgmt.core.brokeradmin.client_permissions``).

Reply addresses. A request names where its reply goes, and whoever answers it may publish
anywhere, so a client could make a node publish into another client's reply queue (or a node's).
Every request therefore says who sent it in the AMQP ``user_id`` property, the connection's user,
which RabbitMQ checks (it refuses a publish whose ``user_id`` is not the connection's user:
``PRECONDITION_FAILED``); ``AsyncBus`` and ``SyncClient`` set it on all they publish. A consumer
answers a request only when ``Topology.may_answer`` allows its reply address for its sender:

- an access key's user (``<ns>.key.<key>``) only into its own ``<ns>.reply.<key>.*`` queues;
- replies into a key's ``<ns>.reply.<key>.*`` queues only for that key's own user;
- anything else (a process's ``<ns>.reply.<process_uuid>``, which has no dot after ``reply.``)
  for a request that names a user that is no key's (a node's, an agent's, the bootstrap guest's),
  or that names none but came through the default exchange, where no key's user may publish.

So a key's user can never have a reply sent into another key's queue or a process's: if it names
itself it may reach only its own prefix, and if it leaves ``user_id`` out it can publish only
through ``<ns>.api-entry``, whose requests without a user are not answered. A request that may
not be answered is not handled either: it is acked and dropped with one warning.

Poison messages. The queues every node shares are RabbitMQ *quorum* queues with a delivery limit:
a message that breaks whoever takes it (the connection drops, the process dies) comes back to
the queue each time, and after ``POISON_DELIVERY_LIMIT`` returns the broker dead-letters it
(``x-death`` reason ``delivery_limit``) instead of handing it to the next node, for ever. The
node's own and reply queues are exclusive, so they die with the connection and take any such
message with them; agents' queues keep the classic type (their names are part of each agent's
broker permissions), and an agent takes only its own host's commands.

Upgrading. RabbitMQ refuses to redeclare a queue with other arguments (``PRECONDITION_FAILED``),
and a classic queue cannot become a quorum queue, so a queue whose arguments change gets a new
name (``.v2``) and keeps its old one in ``QueueSpec.previous``: a consumer of the new queue also
consumes each previous one that still exists (never creating it), so requests that clients of
the earlier release still send there are answered during a rolling upgrade. Once no node or
client of the earlier release is left, delete the old queues::

    rabbitmqctl delete_queue ringstack.api
    rabbitmqctl delete_queue ringstack.agent-reports
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

ExchangeType = Literal["direct", "fanout", "topic"]

# The dead-letter queue is bounded so a flood of garbage cannot fill the broker's disk.
DEAD_LETTER_MAX_LENGTH = 10_000
AGENT_QUEUE_IDLE_EXPIRY_MS = 15 * 60 * 1000
# How many times a message may go back to a shared queue unsettled (its consumer's connection or
# process died with it, or it was requeued at shutdown) before the broker dead-letters it.
POISON_DELIVERY_LIMIT = 5


@dataclass(frozen=True, slots=True)
class ExchangeSpec:
    name: str
    type: ExchangeType
    durable: bool = True


@dataclass(frozen=True, slots=True)
class QueueSpec:
    name: str
    durable: bool = False
    exclusive: bool = False
    auto_delete: bool = False
    arguments: dict[str, Any] = field(default_factory=dict)
    # (exchange, routing key) pairs to bind after declaring
    bindings: tuple[tuple[str, str], ...] = ()
    # Names this queue had in earlier releases: consumed too while they exist (see the module doc).
    previous: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Topology:
    namespace: str = "ringstack"

    # exchanges
    @property
    def events_exchange(self) -> ExchangeSpec:
        return ExchangeSpec(f"{self.namespace}.events", "topic")

    @property
    def membership_exchange(self) -> ExchangeSpec:
        return ExchangeSpec(f"{self.namespace}.membership", "fanout", durable=False)

    @property
    def dead_letter_exchange(self) -> ExchangeSpec:
        return ExchangeSpec(f"{self.namespace}.dead-letter", "fanout")

    @property
    def replies_exchange(self) -> ExchangeSpec:
        return ExchangeSpec(f"{self.namespace}.replies", "direct")

    @property
    def api_entry_exchange(self) -> ExchangeSpec:
        return ExchangeSpec(f"{self.namespace}.api-entry", "direct")

    @property
    def account_events_exchange(self) -> ExchangeSpec:
        return ExchangeSpec(f"{self.namespace}.account-events", "topic")

    def exchanges(self) -> tuple[ExchangeSpec, ...]:
        return (
            self.events_exchange,
            self.membership_exchange,
            self.dead_letter_exchange,
            self.replies_exchange,
            self.api_entry_exchange,
            self.account_events_exchange,
        )

    # queues
    def _dead_lettered(self) -> dict[str, Any]:
        return {"x-dead-letter-exchange": self.dead_letter_exchange.name}

    def _poison_bounded(self) -> dict[str, Any]:
        return {
            **self._dead_lettered(),
            "x-queue-type": "quorum",
            "x-delivery-limit": POISON_DELIVERY_LIMIT,
        }

    @property
    def dead_letter_queue(self) -> QueueSpec:
        return QueueSpec(
            f"{self.namespace}.dead-letter",
            durable=True,
            arguments={"x-max-length": DEAD_LETTER_MAX_LENGTH},
            bindings=((self.dead_letter_exchange.name, ""),),
        )

    @property
    def api_queue(self) -> QueueSpec:
        name = f"{self.namespace}.api.v2"
        return QueueSpec(
            name,
            durable=True,
            arguments=self._poison_bounded(),
            previous=(f"{self.namespace}.api",),
            bindings=((self.api_entry_exchange.name, name),),
        )

    def node_queue(self, node_uuid: str) -> QueueSpec:
        # Exclusive: the broker deletes it the moment the node's connection dies, which is how the
        # other nodes (and publishers using mandatory routing) learn at once that the node is gone.
        return QueueSpec(
            f"{self.namespace}.node.{node_uuid}", exclusive=True, arguments=self._dead_lettered()
        )

    def agent_queue(self, host_uuid: str) -> QueueSpec:
        # Durable, so commands survive a broker restart while the agent reconnects; but it expires
        # once nobody has consumed it for AGENT_QUEUE_IDLE_EXPIRY_MS: a deleted host's queue goes
        # away by itself, and a host down that long gets SYS.UNAVAILABLE at once instead of its
        # commands waiting out their deadlines (no command lives anywhere near that long).
        return QueueSpec(
            f"{self.namespace}.agent.{host_uuid}",
            durable=True,
            arguments={**self._dead_lettered(), "x-expires": AGENT_QUEUE_IDLE_EXPIRY_MS},
        )

    def reply_queue(self, process_uuid: str) -> QueueSpec:
        name = f"{self.namespace}.reply.{process_uuid}"
        return QueueSpec(
            name, exclusive=True, auto_delete=True, bindings=((self.replies_exchange.name, name),)
        )

    @property
    def agent_reports_queue(self) -> QueueSpec:
        return QueueSpec(
            f"{self.namespace}.agent-reports.v2",
            durable=True,
            arguments=self._poison_bounded(),
            bindings=((self.events_exchange.name, "agent.*.*"),),
            previous=(f"{self.namespace}.agent-reports",),
        )

    def membership_queue(self, node_uuid: str) -> QueueSpec:
        return QueueSpec(
            f"{self.namespace}.membership.{node_uuid}",
            exclusive=True,
            auto_delete=True,
            bindings=((self.membership_exchange.name, ""),),
        )

    def event_queue(self, subscriber: str, *patterns: str, durable: bool = False) -> QueueSpec:
        """A subscriber's queue on the events exchange, bound to topic patterns like ``zone.*.*``."""
        return QueueSpec(
            f"{self.namespace}.events.{subscriber}",
            durable=durable,
            exclusive=not durable,
            auto_delete=not durable,
            bindings=tuple((self.events_exchange.name, p) for p in patterns),
        )

    def route_to(self, queue: str) -> tuple[str, str]:
        """(exchange, routing key) that deliver a message to ``queue``: the API queue through its
        entry exchange (the only way an API client may reach it), any other through the default one."""
        if queue == self.api_queue.name:
            return self.api_entry_exchange.name, queue
        return "", queue

    def event_routing_key(self, resource_type: str, resource_uuid: str, action: str) -> str:
        return f"{resource_type}.{resource_uuid}.{action}"

    def account_event_routing_key(self, account_uuid: str, event_key: str) -> str:
        """The key of an event on the account-events exchange: its owner's account first."""
        return f"{account_uuid}.{event_key}"

    # API clients with an access key (mgmt/services/accesskey): their broker user is
    # ``<ns>.key.<key id>`` and every queue they may touch starts with ``<ns>.reply.<key id>.``.
    def client_username(self, key_id: str) -> str:
        return f"{self.namespace}.key.{key_id}"

    def client_key_of(self, username: str | None) -> str | None:
        """The access key id of a broker username, or None when it is not a client's user."""
        prefix = f"{self.namespace}.key."
        if username and username.startswith(prefix) and "." not in username[len(prefix) :]:
            return username[len(prefix) :] or None
        return None

    def client_queue_prefix(self, key_id: str) -> str:
        return f"{self.namespace}.reply.{key_id}."

    def may_answer(self, reply_to: str, user_id: str | None, *, via_default_exchange: bool) -> bool:
        """Whether a request from ``user_id`` (its validated AMQP ``user_id``, None when it has
        none) may have its reply sent to ``reply_to``; the rule is in the module doc."""
        key = self.client_key_of(user_id)
        if key is not None:
            return reply_to.startswith(self.client_queue_prefix(key))
        replies = f"{self.namespace}.reply."
        if reply_to.startswith(replies) and "." in reply_to[len(replies) :]:
            return False  # under some key's prefix: only that key's own user may ask for it
        return user_id is not None or via_default_exchange

    def client_reply_queue(self, key_id: str, process_uuid: str) -> QueueSpec:
        """A client's reply queue: bound to nothing (nodes answer API calls through the default
        exchange), so no one else's traffic can be routed into it."""
        return QueueSpec(f"{self.client_queue_prefix(key_id)}{process_uuid}", exclusive=True, auto_delete=True)

    def client_event_queue(self, key_id: str, subscriber: str, account_uuid: str, *patterns: str) -> QueueSpec:
        """A client's subscription to its account's events; ``patterns`` as for ``event_queue``
        (``vm.*.*``), prefixed with the account here."""
        return QueueSpec(
            f"{self.client_queue_prefix(key_id)}events.{subscriber}",
            exclusive=True,
            auto_delete=True,
            bindings=tuple((self.account_events_exchange.name, f"{account_uuid}.{p}") for p in patterns),
        )

    @property
    def access_key_deletions_queue(self) -> QueueSpec:
        """Access key deletions, for deleting their broker users; nodes share it (one takes each)."""
        return self.event_queue("accesskey", "access_key.*.deleted", durable=True)

    def shared_queues(self) -> tuple[QueueSpec, ...]:
        """Queues that exist independently of any one process."""
        return (self.dead_letter_queue, self.api_queue, self.agent_reports_queue, self.access_key_deletions_queue)
