"""Undo on hosts that is retried until it is done (ZStack's garbage collectors).

A flow step's ``cleanup`` (``mgmt.core.flow.Cleanup``: an idempotent agent command) is sent at
once; when the agent refuses or cannot be reached, the command is recorded (table ``garbage``) and
retried later: when its host reconnects (``kick``) and on an exponential back-off. Before each
retry a guard asks the database whether the cleanup is still wanted (a VM started again on that
host since must not be destroyed by an old start's undo); the guards are registered by the
services that know the resources (``guard``). Retries run in the resource's serial lane on its
owner (``mgmt.services.garbage`` routes them), so they never overtake a later operation.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from bus.envelope import new_uuid
from bus.errors import RingstackError
from mgmt.core.agents import AgentClient
from mgmt.core.db import Database
from mgmt.core.flow import Cleanup
from schema.agent import HypervisorAgent
from schema.agent_base import HostCommand, commands_of
from schema.api.base import parse_wire
from schema.db.garbage import GarbageRecord

log = logging.getLogger(__name__)

H = TypeVar("H", bound=HostCommand)
Guard = Callable[[Session, Any], bool]  # (session, the command) -> is the cleanup still wanted?

COMMANDS = commands_of(HypervisorAgent)
NAMES = {spec.request: name for name, spec in COMMANDS.items()}


def backoff(attempts: int, base: float = 5.0, cap: float = 300.0) -> float:
    """Seconds before the next try after ``attempts`` failed ones: 5, 10, 20, ... up to 5 minutes."""
    return min(cap, base * 2 ** max(0, attempts - 1))


class GarbageCollector:
    def __init__(self, db: Database, agents: AgentClient, *, base_delay: float = 5.0) -> None:
        self.db = db
        self.agents = agents
        self.base_delay = base_delay
        self._guards: dict[type[HostCommand], Guard] = {}
        self.wakeup = asyncio.Event()  # set when something became due now (a host came back)

    def guard(self, command: type[H], wanted: Callable[[Session, H], bool]) -> None:
        """Register the check run before a recorded ``command`` is retried."""
        self._guards[command] = wanted

    # ------------------------------------------------------------------ first try

    async def clean(self, cleanups: Sequence[Cleanup], origin: str) -> list[str]:
        """Send each cleanup; record those that fail. The uuids of the records made."""
        pending: list[str] = []
        for cleanup in cleanups:
            try:
                await self.agents.send(cleanup.command)
            except RingstackError as exc:
                uuid = await self.db.run(self._record, cleanup, origin, exc)
                log.warning(
                    "%s: %s on host %s failed (%s); recorded as pending clean-up %s",
                    origin,
                    NAMES[type(cleanup.command)],
                    cleanup.command.host_uuid,
                    exc,
                    uuid,
                )
                pending.append(uuid)
        return pending

    def _record(self, session: Session, cleanup: Cleanup, origin: str, exc: RingstackError) -> str:
        uuid = new_uuid()
        session.add(
            GarbageRecord(
                uuid=uuid,
                resource_uuid=cleanup.resource_uuid,
                host_uuid=cleanup.command.host_uuid,
                command_name=NAMES[type(cleanup.command)],
                command_body=cleanup.command.to_wire(),
                origin=origin[:255],
                attempts=1,
                last_error=f"{exc.code}: {exc.message}",
                next_attempt_at=_now() + dt.timedelta(seconds=backoff(1, self.base_delay)),
            )
        )
        return uuid

    # ------------------------------------------------------------------ retries

    async def kick(self, host_uuid: str | None = None) -> int:
        """Make the pending clean-ups of a host (or all) due now, e.g. because it reconnected."""

        def due_now(session: Session) -> int:
            stmt = update(GarbageRecord).values(next_attempt_at=func.now())
            if host_uuid is not None:
                stmt = stmt.where(GarbageRecord.host_uuid == host_uuid)
            return session.execute(stmt).rowcount  # type: ignore[attr-defined]

        made_due = await self.db.run(due_now)
        if made_due:
            self.wakeup.set()
        return made_due

    async def due(self, limit: int = 500) -> list[str]:
        """The resources with a clean-up due now."""

        def read(session: Session) -> list[str]:
            stmt = (
                select(GarbageRecord.resource_uuid)
                .where(GarbageRecord.next_attempt_at <= func.now())
                .group_by(GarbageRecord.resource_uuid)
                .order_by(func.min(GarbageRecord.next_attempt_at))
                .limit(limit)
            )
            return list(session.scalars(stmt))

        return await self.db.run(read)

    async def retry(self, resource_uuid: str, *, due_only: bool = True) -> int:
        """Retry the pending clean-ups of one resource, oldest first (run in its serial lane on its
        owner); the number still pending afterwards."""

        def read(session: Session) -> list[tuple[str, str, dict[str, Any], int]]:
            stmt = select(GarbageRecord).where(GarbageRecord.resource_uuid == resource_uuid)
            if due_only:
                stmt = stmt.where(GarbageRecord.next_attempt_at <= func.now())
            rows = session.scalars(stmt.order_by(GarbageRecord.created_at)).all()
            return [(r.uuid, r.command_name, r.command_body, r.attempts) for r in rows]

        for uuid, name, body, attempts in await self.db.run(read):
            spec = COMMANDS.get(name)
            if spec is None:  # recorded by a newer release that knows more commands
                continue
            command = parse_wire(spec.request, body)
            guard = self._guards.get(type(command))
            if guard is not None and not await self.db.run(guard, command):
                log.info("pending clean-up %s (%s) no longer wanted: dropped", uuid, name)
                await self.db.run(_drop, uuid)
                continue
            try:
                await self.agents.send(command)
            except RingstackError as exc:
                await self.db.run(self._failed_again, uuid, attempts + 1, exc)
                log.info("pending clean-up %s (%s) failed again: %s", uuid, name, exc)
                continue
            log.info("pending clean-up %s (%s on host %s) done", uuid, name, command.host_uuid)
            await self.db.run(_drop, uuid)

        def remaining(session: Session) -> int:
            stmt = select(func.count()).where(GarbageRecord.resource_uuid == resource_uuid)
            return int(session.scalar(stmt) or 0)

        return await self.db.run(remaining)

    def _failed_again(self, session: Session, uuid: str, attempts: int, exc: RingstackError) -> None:
        session.execute(
            update(GarbageRecord)
            .where(GarbageRecord.uuid == uuid)
            .values(
                attempts=attempts,
                last_error=f"{exc.code}: {exc.message}",
                next_attempt_at=_now() + dt.timedelta(seconds=backoff(attempts, self.base_delay)),
            )
        )

    async def pending(self, host_uuid: str | None = None) -> list[str]:
        """The resources with any clean-up pending (of one host)."""

        def read(session: Session) -> list[str]:
            stmt = select(GarbageRecord.resource_uuid).distinct()
            if host_uuid is not None:
                stmt = stmt.where(GarbageRecord.host_uuid == host_uuid)
            return list(session.scalars(stmt))

        return await self.db.run(read)


def _drop(session: Session, uuid: str) -> None:
    session.execute(delete(GarbageRecord).where(GarbageRecord.uuid == uuid))


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
