"""Wires membership, ownership and jobs together and drives them from one loop.

Each turn: heartbeat when due (broadcast + lease renewal + evictions), move partition ownership
towards the ring (taking over jobs of newly acquired partitions), sweep for lost jobs, and fence
ourselves if our lease ran out. The loop wakes early when the ring changes, when a peer releases
partitions, and exactly when a partition we want is due to be freed by an expiring lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

from bus.envelope import Envelope
from bus.errors import RingstackError, Sys
from bus.ring import Ring
from mgmt.cluster.jobs import CANCEL_RUNNING_JOB, RUN_JOB, JobRunner
from mgmt.cluster.membership import Membership
from mgmt.cluster.owner import OwnerPath
from mgmt.cluster.ownership import Ownership
from mgmt.cluster.stuck import StuckSweeper

if TYPE_CHECKING:
    from mgmt.node import ManagementNode

log = logging.getLogger(__name__)

NODE_STATUS = "ringstack.NodeStatus"


class RingRuntime:
    def __init__(self, node: ManagementNode) -> None:
        cfg = node.config
        self.node = node
        self.interval = cfg.heartbeat_interval
        self.ownership = Ownership(node_uuid=node.uuid, db=node.db, lease_ttl=cfg.lease_ttl)
        self.membership = Membership(
            node_uuid=node.uuid,
            address=cfg.node_address,
            db=node.db,
            bus=node.bus,
            interval=cfg.heartbeat_interval,
            misses=cfg.heartbeat_misses,
            lease_ttl=cfg.lease_ttl,
            vnodes=cfg.ring_vnodes,
            on_ring=self._on_ring,
            on_evicted=self.ownership.fence_self,
            on_renewed=self.ownership.renewed,
            on_peer_released=self.wake,
        )
        self.owners = OwnerPath(
            node_uuid=node.uuid,
            bus=node.bus,
            dispatcher=node.dispatcher,
            membership=self.membership,
            ownership=self.ownership,
            max_hops=cfg.max_forward_hops,
            lease_wait=cfg.lease_ttl * 2 + cfg.heartbeat_interval,
        )
        self.jobs = JobRunner(
            node_uuid=node.uuid,
            config=cfg,
            db=node.db,
            bus=node.bus,
            dispatcher=node.dispatcher,
            owners=self.owners,
            ownership=self.ownership,
            membership=self.membership,
            events=node.events,
        )
        self.ownership.on_lost = self.jobs.fenced
        self.stuck = StuckSweeper(
            db=node.db,
            extensions=node.extensions,
            ownership=self.ownership,
            membership=self.membership,
            jobs=self.jobs,
        )
        self._stuck_interval = cfg.stuck_scan_interval
        self._next_stuck_scan = 0.0
        self._scanning: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._next_heartbeat = 0.0

    @property
    def ring(self) -> Ring:
        return self.membership.ring

    async def start(self) -> None:
        await self.membership.start()
        self._next_heartbeat = time.monotonic() + self.interval
        await self._sync()
        self._loop_task = asyncio.create_task(self._loop(), name="cluster-loop")

    async def _on_ring(self, ring: Ring) -> None:
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    async def _sync(self) -> float | None:
        result = await self.ownership.sync(self.membership.ring)
        if result.released:
            await self.membership.announce_release()
        if result.acquired:
            await self.jobs.takeover(result.acquired)
            self._scan_stuck(result.acquired)
        return result.retry_in

    def _scan_stuck(self, partitions: frozenset[int] | None = None) -> None:
        """Settle stuck resources in the background (one scan at a time; a later one covers all)."""
        self._next_stuck_scan = time.monotonic() + self._stuck_interval
        if self._scanning is not None and not self._scanning.done():
            return

        async def scan() -> None:
            try:
                await self.stuck.scan(partitions)
            except Exception:
                log.exception("looking for stuck resources failed; the next scan tries again")

        self._scanning = asyncio.create_task(scan(), name="stuck-scan")

    async def _loop(self) -> None:
        retry_in: float | None = None
        while not self._stopping:
            now = time.monotonic()
            waits = [self._next_heartbeat - now]
            if retry_in is not None:
                waits.append(retry_in + 0.02)
            if self.ownership.held:
                waits.append(self.ownership.lease_remaining)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, min(waits)))
            self._wake.clear()
            if self._stopping:
                return
            try:
                if time.monotonic() >= self._next_heartbeat:
                    self._next_heartbeat = time.monotonic() + self.interval
                    await self.membership.tick()
                    await self.jobs.sweep()
                    await self.jobs.flush_replied()
                    if time.monotonic() >= self._next_stuck_scan:
                        self._scan_stuck()
                if not self.ownership.lease_valid and self.ownership._held:
                    await self.ownership.fence_self()
                retry_in = await self._sync()
            except Exception:
                log.exception("cluster loop turn failed; retrying")
                retry_in = None

    async def stop(self, drain_timeout: float) -> bool:
        """Finish running jobs, hand partitions back, leave."""
        drained = await self.jobs.drain(drain_timeout)
        self._stopping = True
        if self._scanning is not None:
            self._scanning.cancel()
        self._wake.set()
        if self._loop_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        try:
            await self.membership.leave()
        except Exception:
            log.exception("leaving the cluster failed; the others will evict this node")
        return drained

    # ------------------------------------------------------------------ node-queue messages

    async def on_internal(self, env: Envelope) -> dict[str, Any] | None:
        if env.name == RUN_JOB:
            await self.jobs.on_run_job(env)
            return None
        if env.name == CANCEL_RUNNING_JOB:
            return {"state": self.jobs.cancel_running(str(env.body.get("job")))}
        if env.name == NODE_STATUS:
            return self.status()
        raise RingstackError(Sys.UNKNOWN_MESSAGE, f"no internal handler for {env.name!r}")

    def status(self) -> dict[str, Any]:
        ring = self.membership.ring
        return {
            "uuid": self.node.uuid,
            "epoch": ring.epoch,
            "members": list(ring.members),
            "partitionsHeld": len(self.ownership.held),
            "partitions": ring.partitions,
            "leaseRemaining": round(self.ownership.lease_remaining, 3),
            "brokerEvents": self.membership.broker_events,
            "serialQueueDepth": self.node.serial.total,
            **self.jobs.status(),
        }

    @staticmethod
    def is_internal(name: str) -> bool:
        return name.startswith("ringstack.")
