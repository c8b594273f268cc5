"""Pending clean-ups on hosts (``mgmt.core.garbage``): the retry loop, and the operators' API.

Every node runs the loop: what is due (its back-off passed, or its host came back and ``kick``
made it due) is routed, per resource, to the resource's owner, which retries it in the resource's
serial lane (``CleanUpResource``), behind any operation on it in progress. ``QueryGarbageCollector``
lists what is pending, with the last error and the next attempt; ``TriggerGarbageCollector``
retries now.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from bus.errors import RingstackError
from mgmt.cluster.owner import OwnerPath
from mgmt.core.db import Database
from mgmt.core.garbage import GarbageCollector
from mgmt.core.query import QueryTarget, run_query
from mgmt.core.service import CallContext, Service, handler
from schema.api.base import QueryReply
from schema.api.garbage import (
    CleanUpResource,
    GarbageCollectorInventory,
    QueryGarbageCollector,
    TriggerGarbageCollector,
    TriggerGarbageCollectorReply,
)
from schema.db.garbage import GarbageRecord

log = logging.getLogger(__name__)

QUERY = QueryTarget.for_model(GarbageRecord, GarbageCollectorInventory, name="garbageCollector")
# How often the loop looks for due clean-ups when nothing wakes it (a kick wakes it at once).
POLL_INTERVAL = 5.0


class GarbageService(Service):
    name = "garbage"

    db: Database
    garbage: GarbageCollector
    owners: OwnerPath

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="garbage-collector")

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.garbage.wakeup.wait(), POLL_INTERVAL)
            self.garbage.wakeup.clear()
            try:
                for resource_uuid in await self.garbage.due():
                    await self._route(resource_uuid, due_only=True)
            except Exception:
                log.exception("garbage collection round failed")

    async def _route(self, resource_uuid: str, *, due_only: bool) -> int:
        """Have the resource's owner retry its clean-ups; the number left (or -1: not reached)."""
        body = {"uuid": resource_uuid, "dueOnly": due_only}
        try:
            reply = await self.owners.call(CleanUpResource.__name__, body, resource_uuid=resource_uuid)
        except RingstackError as exc:
            log.info("pending clean-ups of %s not retried now: %s", resource_uuid, exc)
            return -1
        return int(reply.get("remaining", 0))

    @handler(CleanUpResource)
    async def clean_up_resource(self, msg: CleanUpResource, ctx: CallContext) -> TriggerGarbageCollectorReply:
        remaining = await self.garbage.retry(msg.uuid, due_only=msg.due_only)
        return TriggerGarbageCollectorReply(retried=1, remaining=remaining)

    @handler(TriggerGarbageCollector, serial=False)
    async def trigger(self, msg: TriggerGarbageCollector, ctx: CallContext) -> TriggerGarbageCollectorReply:
        if msg.resource_uuid is not None:
            resources = [msg.resource_uuid]
        else:
            resources = await self.garbage.pending(msg.host_uuid)
        for resource_uuid in resources:
            await self._route(resource_uuid, due_only=False)

        def count(session: Session) -> int:
            return int(session.scalar(select(func.count()).select_from(GarbageRecord)) or 0)

        return TriggerGarbageCollectorReply(retried=len(resources), remaining=await self.db.run(count))

    @handler(QueryGarbageCollector, serial=False)
    async def query(self, msg: QueryGarbageCollector, ctx: CallContext) -> QueryReply:
        return await self.db.run(run_query, QUERY, msg, None)
