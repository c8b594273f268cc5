"""Partition ownership with leases and fencing tokens: why no resource ever has two owners.

The ring (``bus.ring``) says which node *should* own each partition; this module makes ownership
*exclusive*, whatever the nodes' views are while they change.

The argument:

1. A node holds a partition only when the ``ring_partition`` row names it. A row changes holder
   only through one conditional UPDATE: to a node that wants it, and only if the row names nobody,
   names that node already, or names a node whose lease (``management_node.lease_expires_at``,
   database clock) has passed. Every change of holder bumps the row's fencing ``token``.
2. A node renews its lease every heartbeat interval from a thread of its own (``LeaseKeeper`` in
   ``membership``; ``now() + ttl`` by the database clock), which stops renewing if the event loop
   stalls for long. It counts
   its own lease as valid only until ``t_sent + ttl - margin`` by its local monotonic clock, where
   ``t_sent`` is taken *before* the renewal is sent. The database's expiry is therefore always
   later than the moment the node stops believing in its lease (clock rates differ by far less
   than ``margin`` over a few seconds). When its local lease runs out, the node drops every
   partition and cancels the jobs running in them (self-fencing) before anyone may take over.
3. A node releases a partition it no longer should own only once no job runs in it.
4. Every database transaction of a job runs ``SELECT ... FOR SHARE`` on its partition row with
   the token it started with (``mgmt.core.db.Fence``). A stale holder's write fails with
   ``SYS.NOT_OWNER``; and since a takeover is an UPDATE of that row, it waits for any fenced
   transaction in flight to commit first. So even a node that is wrong about its lease (paused
   process, skewed clock) cannot change state after someone else took over.

Ownership therefore moves only: released by the holder after its work ended (joins, clean
leaves), or after the holder's lease expired and it had fenced itself (crashes, partitions).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.orm import Session

from bus.ring import Ring
from mgmt.core.db import Database, Fence

log = logging.getLogger(__name__)

# How much earlier than the database a node gives up its lease (covers clock-rate differences and
# the time between reading the clock and the renewal reaching the database).
LEASE_MARGIN = 0.25


@dataclass(frozen=True)
class SyncResult:
    acquired: frozenset[int]
    released: frozenset[int]
    retry_in: float | None  # seconds until a wanted partition's old lease expires


def _sync(
    session: Session, node_uuid: str, release: list[int], acquire: list[int]
) -> tuple[list[tuple[int, int]], float | None]:
    if release:
        session.execute(
            text(
                "UPDATE ring_partition SET owner_node_uuid = NULL WHERE partition = ANY(:r) AND owner_node_uuid = :me"
            ),
            {"r": release, "me": node_uuid},
        )
    if not acquire:
        return [], None
    rows = session.execute(
        text(
            """
            UPDATE ring_partition SET owner_node_uuid = :me, token = token + 1
            WHERE partition = ANY(:a) AND (
                owner_node_uuid IS NULL OR owner_node_uuid = :me
                OR NOT EXISTS (SELECT 1 FROM management_node m
                               WHERE m.uuid = ring_partition.owner_node_uuid AND m.lease_expires_at > now()))
            RETURNING partition, token
            """
        ),
        {"a": acquire, "me": node_uuid},
    ).all()
    got = {int(p) for p, _ in rows}
    missing = [p for p in acquire if p not in got]
    retry_in = None
    if missing:
        retry_in = session.scalar(
            text(
                """
                SELECT EXTRACT(EPOCH FROM min(m.lease_expires_at) - now()) FROM ring_partition rp
                JOIN management_node m ON m.uuid = rp.owner_node_uuid WHERE rp.partition = ANY(:m)
                """
            ),
            {"m": missing},
        )
    return [(int(p), int(t)) for p, t in rows], (float(retry_in) if retry_in is not None else None)


class Ownership:
    def __init__(self, *, node_uuid: str, db: Database, lease_ttl: float) -> None:
        self.node_uuid = node_uuid
        self.db = db
        self.lease_ttl = lease_ttl
        self._held: dict[int, int] = {}  # partition -> fencing token
        self._lease_until = 0.0  # local monotonic deadline of this node's lease
        self.in_flight: Counter[int] = Counter()  # partition -> jobs running in it
        self._changed = asyncio.Condition()
        self.on_lost: Callable[[frozenset[int]], Awaitable[None]] | None = None

    # ------------------------------------------------------------------ the lease

    def renewed(self, sent_at: float) -> None:
        """The node's lease was renewed by a request sent at ``sent_at`` (monotonic)."""
        self._lease_until = sent_at + self.lease_ttl - LEASE_MARGIN

    @property
    def lease_valid(self) -> bool:
        return time.monotonic() < self._lease_until

    @property
    def lease_remaining(self) -> float:
        return self._lease_until - time.monotonic()

    async def fence_self(self) -> None:
        """Give up every partition at once (our lease ran out, or we were evicted)."""
        lost = frozenset(self._held)
        self._held.clear()
        self._lease_until = 0.0
        if lost:
            log.error("node %s fenced itself: dropped %d partitions", self.node_uuid, len(lost))
            if self.on_lost is not None:
                await self.on_lost(lost)

    # ------------------------------------------------------------------ partitions

    def token(self, partition: int) -> int | None:
        """The fencing token under which this node may work on ``partition`` now, if any."""
        if not self.lease_valid:
            return None
        return self._held.get(partition)

    def fence(self, partition: int, token: int) -> Fence:
        """The fence for work under ``token``; it knows when this node stops holding it."""
        return Fence(self.node_uuid, partition, token, held=lambda: self.token(partition) == token)

    @property
    def held(self) -> frozenset[int]:
        return frozenset(self._held) if self.lease_valid else frozenset()

    async def sync(self, ring: Ring) -> SyncResult:
        """Move towards the ring: release what is no longer ours (when idle), take what is."""
        if not self.lease_valid:
            return SyncResult(frozenset(), frozenset(), None)
        desired = ring.partitions_of(self.node_uuid)
        release = [p for p in self._held if p not in desired and self.in_flight[p] == 0]
        acquire = [p for p in desired if p not in self._held]
        if not release and not acquire:
            return SyncResult(frozenset(), frozenset(), None)
        rows, retry_in = await self.db.run_system(_sync, self.node_uuid, release, acquire)
        for p in release:
            self._held.pop(p, None)
        for p, token in rows:
            self._held[p] = token
        acquired = frozenset(p for p, _ in rows)
        if acquired or release:
            log.info(
                "node %s: +%d / -%d partitions, holding %d",
                self.node_uuid[:8],
                len(acquired),
                len(release),
                len(self._held),
            )
        async with self._changed:
            self._changed.notify_all()
        return SyncResult(acquired, frozenset(release), retry_in)

    async def wait_held(self, partition: int, timeout: float) -> int | None:
        """Wait up to ``timeout`` for this node to hold ``partition``; its token, or None."""
        deadline = time.monotonic() + timeout
        async with self._changed:
            while (token := self.token(partition)) is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                try:
                    await asyncio.wait_for(self._changed.wait(), left)
                except TimeoutError:
                    return None
            return token
