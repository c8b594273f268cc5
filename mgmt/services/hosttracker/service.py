"""Host tracking: every node pings the hosts it owns and keeps their status and VMs true.

Each ``host_ping_interval`` the node pings every host in the partitions it holds (so when
ownership moves, the new owner's next round covers the host: no gap longer than one interval).
After ``host_ping_misses`` failed pings (no answer, an error, or an agent claiming to be another
host) a Connected host becomes Disconnected and its VMs Unknown. When it answers again it is
reconnected (``agent.connect``) and its VMs reconciled with what it really runs
(``mgmt.services.vm.reconcile``). Writes are fenced with the host's partition token.

Agents' own reports (``agent.<host>.vm_state``) arrive on the shared reports queue; whichever node
takes one routes it to the VM's owner, where it is applied in the VM's serial queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from bus.aio import AsyncBus
from bus.envelope import Envelope
from bus.errors import RingstackError
from mgmt.cluster.owner import OwnerPath
from mgmt.config import NodeConfig
from mgmt.core.agents import AgentClient
from mgmt.core.db import Database
from mgmt.core.events import EventPublisher
from mgmt.core.garbage import GarbageCollector
from mgmt.core.service import Service
from mgmt.services.host.connect import connect_simulator
from mgmt.services.vm.reconcile import Drift, mark_unknown, reconcile_host
from schema.agent import (
    REPORT_VM_STATE,
    ConnectCommand,
    ConnectReply,
    PingCommand,
    PingReply,
    VmSyncCommand,
    VmSyncReply,
)
from schema.db.host import Host

log = logging.getLogger(__name__)


def _hosts(session: Session) -> list[tuple[str, str, str, int, int]]:
    rows = session.execute(
        select(Host.uuid, Host.status, Host.hypervisor_type, Host.total_cpu, Host.total_memory_size).where(
            Host.state != "Maintenance",
            # A host being connected (an agent deployment takes a minute) belongs to that job: a
            # ping now would call it Disconnected and its VMs Unknown, only for the job to undo it.
            # The job is durable, so a host is not left Connecting when its node dies.
            Host.status != "Connecting",
        )
    )
    return [(u, s, h, c, m) for u, s, h, c, m in rows]


def _set_status(session: Session, host_uuid: str, status: str, reason: str | None) -> bool:
    changed = session.execute(
        update(Host)
        .where(Host.uuid == host_uuid, Host.status != status)
        .values(status=status, status_reason=reason)
        .returning(Host.uuid)
    ).first()
    return changed is not None


class HostTracker(Service):
    name = "hosttracker"

    db: Database
    agents: AgentClient
    garbage: GarbageCollector
    owners: OwnerPath
    node_uuid: str
    events: EventPublisher
    config: NodeConfig
    bus: AsyncBus

    async def start(self) -> None:
        self._misses: dict[str, int] = {}
        self._limit = asyncio.Semaphore(64)
        self._task = asyncio.create_task(self._loop(), name="host-tracker")
        await self.bus.start_consumer(
            self.bus.consume(self.bus.topology.agent_reports_queue, self._on_report, prefetch=64)
        )

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.host_ping_interval)
            try:
                await self.check_all()
            except Exception:
                log.exception("host tracking round failed")

    async def check_all(self) -> None:
        hosts = await self.db.run_unfenced(_hosts)
        owned = [h for h in hosts if self.owners.holds(h[0])]
        await asyncio.gather(*(self._check(u, s, h, c, m) for u, s, h, c, m in owned))

    async def _check(self, host_uuid: str, status: str, hypervisor: str, cpu: int, memory: int) -> None:
        async with self._limit:
            reason = None
            try:
                reply = await self.agents.call(
                    PingCommand(host_uuid=host_uuid),
                    PingReply,
                    timeout=min(self.config.host_ping_interval, 10),
                )
                if reply.host_uuid != host_uuid:
                    reason = f"the agent answering for host {host_uuid} says it is host {reply.host_uuid}"
            except RingstackError as exc:
                reason = f"{exc.code}: {exc.message}"
                if hypervisor == "Simulator":
                    # A restarted simulator forgot the host (its queue survives, unserved): ask it again.
                    await connect_simulator(self.bus, self.agents, host_uuid, cpu, memory, timeout=2)
            if reason is None:
                self._misses.pop(host_uuid, None)
                if status != "Connected":
                    await self.reconnect(host_uuid)
                return
            misses = self._misses[host_uuid] = self._misses.get(host_uuid, 0) + 1
            if misses >= self.config.host_ping_misses and status != "Disconnected":
                await self.disconnect(host_uuid, reason)

    async def disconnect(self, host_uuid: str, reason: str) -> None:
        def apply(session: Session) -> tuple[bool, list[Drift]]:
            return _set_status(session, host_uuid, "Disconnected", reason), mark_unknown(session, host_uuid)

        with self.owners.fenced_if_held(host_uuid) as owned:
            if not owned:
                return
            changed, drifts = await self.db.run(apply)
        if changed:
            log.warning("host %s disconnected: %s", host_uuid, reason)
            await self.events.resource_event(
                "host", host_uuid, "status", {"status": "Disconnected", "reason": reason}
            )
        await self._publish(drifts)

    async def reconnect(self, host_uuid: str) -> None:
        try:
            await self.agents.call(
                ConnectCommand(host_uuid=host_uuid, management_node_uuid=self.node_uuid), ConnectReply
            )
            sync = await self.agents.call(VmSyncCommand(host_uuid=host_uuid), VmSyncReply)
        except RingstackError as exc:
            log.info("host %s answers pings but not connect/sync: %s", host_uuid, exc)
            return
        actual = {vm.uuid: vm.state for vm in sync.vms}

        def apply(session: Session) -> tuple[bool, list[Drift]]:
            return _set_status(session, host_uuid, "Connected", None), reconcile_host(
                session, host_uuid, actual
            )

        with self.owners.fenced_if_held(host_uuid) as owned:
            if not owned:
                return
            changed, drifts = await self.db.run(apply)
        if changed:
            log.info("host %s reconnected", host_uuid)
            await self.events.resource_event("host", host_uuid, "status", {"status": "Connected"})
            await self.garbage.kick(host_uuid)  # its pending clean-ups: now
        await self._publish(drifts)

    async def _publish(self, drifts: list[Drift]) -> None:
        for drift in drifts:
            await self.events.resource_event(drift.kind, drift.uuid, drift.action, dict(drift.detail))

    async def _on_report(self, env: Envelope) -> dict[str, Any] | None:
        if env.name != f"agent.report.{REPORT_VM_STATE}":
            return None
        body = env.body
        vm_uuid, host_uuid = body.get("vmUuid"), body.get("hostUuid")
        if not isinstance(vm_uuid, str) or not isinstance(host_uuid, str):
            log.warning("unreadable vm_state report dropped: %r", body)
            return None
        await self.owners.call(
            "VmStateReported",
            {
                "uuid": vm_uuid,
                "hostUuid": host_uuid,
                "state": body.get("state"),
                "reason": body.get("reason", ""),
            },
            resource_uuid=vm_uuid,
        )
        return None
