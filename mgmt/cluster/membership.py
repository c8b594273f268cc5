"""Who is in the management cluster, and the ring that follows from it.

The database is the authority on membership: the ``management_node`` table says who is alive, and
``cluster_meta.epoch`` is bumped by every join, leave and eviction in the same transaction. A view
is read under a share lock on that epoch row, so two nodes that see the same epoch see the same
members, and therefore build the same ring.

The broker is how changes travel fast. Nodes broadcast join / heartbeat / leave on the membership
fanout exchange; a message carrying a newer epoch makes the receiver re-read the view at once.

The database alone decides who is evicted: a node is evicted only once its lease (renewed with its
database heartbeat by a thread of its own) has expired by the database's clock. The broker only
tells the others when to look: when a node's broadcasts stop for ``misses`` intervals, or when the
broker deletes its exclusive node queue (its connection died; the broker's event exchange reports
it when the ``rabbitmq_event_exchange`` plugin is on), the others check its lease, and check again
the moment it would expire. A node killed is so evicted as soon as its lease runs out (which is
also the earliest moment anyone may take its partitions over); a broker outage, which silences
every node and closes every connection, evicts nobody and costs nobody a partition. A node that
finds itself evicted stops working on resources (see ``ownership``) and joins again.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiormq.abc import DeliveredMessage
from sqlalchemy import text
from sqlalchemy.orm import Session

from bus.aio import AsyncBus
from bus.envelope import Envelope
from bus.ring import Ring
from bus.topology import QueueSpec
from mgmt.core.db import Database

log = logging.getLogger(__name__)

BROKER_EVENTS_EXCHANGE = "amq.rabbitmq.event"


@dataclass(frozen=True)
class View:
    epoch: int
    members: tuple[str, ...]
    partitions: int


def _read_view(session: Session) -> View:
    epoch, partitions = session.execute(
        text("SELECT epoch, partitions FROM cluster_meta WHERE id = 1 FOR SHARE")
    ).one()
    members = session.scalars(
        text("SELECT uuid FROM management_node WHERE state = 'alive' ORDER BY uuid")
    ).all()
    return View(int(epoch), tuple(members), int(partitions))


def _bump_epoch(session: Session) -> None:
    session.execute(text("UPDATE cluster_meta SET epoch = epoch + 1 WHERE id = 1"))


def _join(session: Session, node_uuid: str, address: str, lease_ttl: float) -> View:
    session.execute(text("SELECT 1 FROM cluster_meta WHERE id = 1 FOR UPDATE"))
    session.execute(
        text(
            """
            INSERT INTO management_node (uuid, address, state, joined_at, last_heartbeat, lease_expires_at)
            VALUES (:u, :a, 'alive', now(), now(), now() + make_interval(secs => :ttl))
            ON CONFLICT (uuid) DO UPDATE SET state = 'alive', address = :a, joined_at = now(),
                last_heartbeat = now(), lease_expires_at = now() + make_interval(secs => :ttl)
            """
        ),
        {"u": node_uuid, "a": address, "ttl": lease_ttl},
    )
    _bump_epoch(session)
    return _read_view(session)


def _heartbeat(session: Session, node_uuid: str, lease_ttl: float) -> int | None:
    """Renew this node's lease; its new epoch view number, or None when this node was evicted."""
    renewed = session.execute(
        text(
            "UPDATE management_node SET last_heartbeat = now(), "
            "lease_expires_at = now() + make_interval(secs => :ttl) WHERE uuid = :u AND state = 'alive' RETURNING 1"
        ),
        {"u": node_uuid, "ttl": lease_ttl},
    ).first()
    if renewed is None:
        return None
    return int(session.scalar(text("SELECT epoch FROM cluster_meta WHERE id = 1")) or 0)


def _evict(session: Session, node_uuid: str) -> tuple[bool, float | None]:
    """Mark a node dead if its lease has expired (by the database's clock). Returns whether it was
    evicted now, and otherwise the seconds its lease still runs (None: it is no longer alive)."""
    session.execute(text("SELECT 1 FROM cluster_meta WHERE id = 1 FOR UPDATE"))
    row = session.execute(
        text(
            "SELECT EXTRACT(EPOCH FROM lease_expires_at - now()) FROM management_node "
            "WHERE uuid = :u AND state = 'alive'"
        ),
        {"u": node_uuid},
    ).first()
    if row is None:
        return False, None
    left = float(row[0])
    if left > 0:
        return False, left
    session.execute(text("UPDATE management_node SET state = 'dead' WHERE uuid = :u"), {"u": node_uuid})
    _bump_epoch(session)
    return True, None


def _leave(session: Session, node_uuid: str) -> None:
    session.execute(text("SELECT 1 FROM cluster_meta WHERE id = 1 FOR UPDATE"))
    # Expire the lease now and hand partitions back, so the others take over without waiting.
    session.execute(
        text("UPDATE management_node SET state = 'left', lease_expires_at = now() WHERE uuid = :u"),
        {"u": node_uuid},
    )
    session.execute(
        text("UPDATE ring_partition SET owner_node_uuid = NULL WHERE owner_node_uuid = :u"), {"u": node_uuid}
    )
    _bump_epoch(session)


RingListener = Callable[[Ring], Awaitable[None]]


class LeaseKeeper(threading.Thread):
    """Renews this node's lease (and database heartbeat) from a thread of its own.

    On a saturated machine an event loop can lag for seconds; the lease must not lapse for that,
    or a busy but healthy node would fence itself and drop all its work. But a loop that is truly
    stuck must not keep its partitions for ever either: the keeper stops renewing when the loop
    has not checked in for ``loop_stall`` seconds, and the lease then lapses as it should.
    The loop checks in from a task that does nothing else (``Membership._watch_loop``): it must
    measure the loop, not work that waits on the broker or the database (a broker outage once
    held the heartbeat broadcast, and with it the check-in, long enough to fence every node).
    """

    def __init__(
        self,
        db: Database,
        node_uuid: str,
        interval: float,
        lease_ttl: float,
        on_renewed: Callable[[float], None],
        loop_stall: float,
    ) -> None:
        super().__init__(name="lease-keeper", daemon=True)
        self.db = db
        self.node_uuid = node_uuid
        self.interval = interval
        self.lease_ttl = lease_ttl
        self.on_renewed = on_renewed
        self.loop_stall = loop_stall
        self.loop_seen = time.monotonic()
        self.epoch: int | None = None  # the cluster epoch the database had at the last renewal
        self.evicted = threading.Event()
        self._stop = threading.Event()

    def run(self) -> None:
        while not self._stop.wait(self.interval):
            if self.evicted.is_set():
                continue  # the loop fences and rejoins; renewing now would be a lie
            if time.monotonic() - self.loop_seen > self.loop_stall:
                log.error(
                    "event loop silent for %.1f s: letting the lease lapse", time.monotonic() - self.loop_seen
                )
                continue
            sent = time.monotonic()
            try:
                epoch = self.db.run_system_blocking(_heartbeat, self.node_uuid, self.lease_ttl)
            except Exception as exc:
                log.warning("lease renewal failed: %s", exc)
                continue
            if epoch is None:
                self.evicted.set()
            else:
                self.epoch = epoch
                self.on_renewed(sent)

    def stop(self) -> None:
        self._stop.set()


class Membership:
    def __init__(
        self,
        *,
        node_uuid: str,
        address: str,
        db: Database,
        bus: AsyncBus,
        interval: float,
        misses: int,
        lease_ttl: float,
        vnodes: int,
        on_ring: RingListener,
        on_evicted: Callable[[], Awaitable[None]],
        on_renewed: Callable[[float], None],
        on_peer_released: Callable[[], None],
    ) -> None:
        self.node_uuid = node_uuid
        self.address = address
        self.db = db
        self.bus = bus
        self.interval = interval
        self.misses = misses
        self.lease_ttl = lease_ttl
        self.vnodes = vnodes
        self._on_ring = on_ring
        self._on_evicted = on_evicted
        self._on_renewed = on_renewed
        self._on_peer_released = on_peer_released
        self.ring = Ring.build(0, ())
        self._last_seen: dict[str, float] = {}
        self._refresh_lock = asyncio.Lock()
        self._keeper = LeaseKeeper(
            db, node_uuid, interval, lease_ttl, on_renewed, loop_stall=max(10.0, 5 * lease_ttl)
        )
        self._watchdog: asyncio.Task[None] | None = None
        self._rechecks: dict[str, asyncio.TimerHandle] = {}  # node -> a look at its lease when due
        self._housekeeping: set[asyncio.Task[None]] = set()
        self.broker_events = False  # whether the broker reports deleted queues to us
        topo = bus.topology
        self._node_queue_prefix = f"{topo.namespace}.node."

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        topo = self.bus.topology
        consumer = self.bus.consume(topo.membership_queue(self.node_uuid), self._on_broadcast, prefetch=64)
        await self.bus.start_consumer(consumer)
        if await self.bus.exchange_exists(BROKER_EVENTS_EXCHANGE):
            spec = QueueSpec(
                f"{topo.namespace}.broker-events.{self.node_uuid}",
                exclusive=True,
                auto_delete=True,
                bindings=((BROKER_EVENTS_EXCHANGE, "queue.deleted"),),
            )
            await self.bus.start_consumer(self.bus.consume_raw(spec, self._on_broker_event))
            self.broker_events = True
        else:
            log.warning(
                "RabbitMQ's event exchange is off (rabbitmq-plugins enable rabbitmq_event_exchange): "
                "a dead node is noticed only after %d missed heartbeats",
                self.misses,
            )
        sent = time.monotonic()
        view = await self.db.run_system(_join, self.node_uuid, self.address, self.lease_ttl)
        self._on_renewed(sent)
        await self._apply(view)
        await self._broadcast("join")
        self._watchdog = asyncio.create_task(self._watch_loop(), name="loop-watchdog")
        self._keeper.start()

    async def _watch_loop(self) -> None:
        """Tell the lease keeper the event loop runs; nothing else, so nothing else can delay it."""
        while True:
            self._keeper.loop_seen = time.monotonic()
            await asyncio.sleep(self.interval / 2)

    async def leave(self) -> None:
        self._keeper.stop()
        if self._watchdog is not None:
            self._watchdog.cancel()
        for handle in self._rechecks.values():
            handle.cancel()
        self._rechecks.clear()
        await self.db.run_system(_leave, self.node_uuid)
        await self._broadcast("leave")

    # ------------------------------------------------------------------ the periodic tick

    async def tick(self) -> None:
        """Heartbeat broadcast, react to what the lease keeper saw, then look at the silent."""
        await self._broadcast("heartbeat")
        if self._keeper.evicted.is_set():
            log.error("node %s was evicted by the others: fencing itself and joining again", self.node_uuid)
            await self._on_evicted()
            sent = time.monotonic()
            view = await self.db.run_system(_join, self.node_uuid, self.address, self.lease_ttl)
            self._on_renewed(sent)
            self._keeper.evicted.clear()
            await self._apply(view)
            await self._broadcast("join")
            return
        if self._keeper.epoch is not None and self._keeper.epoch != self.ring.epoch:
            await self.refresh()
        await self._check_silent()

    async def _check_silent(self) -> None:
        now = time.monotonic()
        limit = self.misses * self.interval
        for member in self.ring.members:
            if member == self.node_uuid or member in self._rechecks:
                continue
            seen = self._last_seen.setdefault(member, now)  # a member never heard gets a full grace period
            if now - seen > limit:
                await self.evict(member, f"no heartbeat for {now - seen:.1f} s")

    async def evict(self, node_uuid: str, reason: str) -> None:
        """Evict a member that seems gone (``reason``) if the database agrees: its lease expired.
        If it has not yet, look again the moment it would; a live node will have renewed it."""
        if node_uuid == self.node_uuid or node_uuid not in self.ring.members:
            return
        evicted, left = await self.db.run_system(_evict, node_uuid)
        if evicted:
            log.warning("evicted node %s: %s", node_uuid, reason)
            await self.refresh()
            await self._broadcast("changed")
        elif left is None:
            await self.refresh()  # it left or was evicted meanwhile
        elif node_uuid not in self._rechecks:
            log.info("node %s seems gone (%s) but its lease runs %.1f s more", node_uuid[:8], reason, left)
            loop = asyncio.get_running_loop()
            self._rechecks[node_uuid] = loop.call_later(left + 0.05, self._recheck, node_uuid, reason)

    def _recheck(self, node_uuid: str, reason: str) -> None:
        self._rechecks.pop(node_uuid, None)

        async def look() -> None:
            evicted, _ = await self.db.run_system(_evict, node_uuid)
            if evicted:
                log.warning("evicted node %s: %s, and its lease expired", node_uuid, reason)
                await self.refresh()
                await self._broadcast("changed")

        task = asyncio.create_task(self._logged(look()), name=f"recheck-{node_uuid[:8]}")
        self._housekeeping.add(task)
        task.add_done_callback(self._housekeeping.discard)

    @staticmethod
    async def _logged(work: Awaitable[None]) -> None:
        try:
            await work
        except Exception:
            log.exception("membership check failed; the next heartbeat looks again")

    async def refresh(self) -> None:
        async with self._refresh_lock:
            view = await self.db.run_system(_read_view)
            await self._apply(view)

    async def _apply(self, view: View) -> None:
        if view.epoch == self.ring.epoch and view.members == self.ring.members:
            return
        self.ring = Ring.build(view.epoch, view.members, view.partitions, self.vnodes)
        now = time.monotonic()
        self._last_seen = {m: self._last_seen.get(m, now) for m in view.members}
        log.info("ring epoch %d: %d members %s", view.epoch, len(view.members), [m[:8] for m in view.members])
        await self._on_ring(self.ring)

    # ------------------------------------------------------------------ messages

    async def announce_release(self) -> None:
        await self._broadcast("released")

    async def _broadcast(self, kind: str) -> None:
        # The database lease, not the broadcast, keeps us a member: a broadcast never waits for a
        # broker that is away (the cluster loop sends it, and must keep turning meanwhile).
        if not self.bus.connected:
            return
        env = Envelope(
            name=f"membership.{kind}",
            kind="event",
            body={"node": self.node_uuid, "address": self.address},
            ring_epoch=self.ring.epoch,
        )
        try:
            await asyncio.wait_for(
                self.bus.publish(self.bus.topology.membership_exchange.name, "", env), self.interval
            )
        except Exception as exc:
            log.info("membership %s not broadcast: %s", kind, exc)

    async def _on_broadcast(self, env: Envelope) -> None:
        sender = env.body.get("node")
        if not isinstance(sender, str) or sender == self.node_uuid:
            return
        self._last_seen[sender] = time.monotonic()
        if env.name == "membership.released":
            self._on_peer_released()  # partitions we want may be free now
        if (
            env.name == "membership.leave"
            or (env.ring_epoch or 0) > self.ring.epoch
            or sender not in self.ring.members
        ):
            await self.refresh()

    async def _on_broker_event(self, message: DeliveredMessage) -> None:
        headers: dict[str, Any] = message.header.properties.headers or {}
        name = headers.get("name")
        if isinstance(name, bytes):
            name = name.decode()
        if isinstance(name, str) and name.startswith(self._node_queue_prefix):
            await self.evict(
                name[len(self._node_queue_prefix) :], "its node queue was deleted (connection lost)"
            )
