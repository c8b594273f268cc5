"""The owner's side of ``mgmt.core.stuck``: find the stuck resources of the partitions this node
holds and settle each with a durable job, on takeover and every ``stuck_scan_interval``."""

from __future__ import annotations

import logging

from mgmt.cluster.jobs import JobRunner
from mgmt.cluster.membership import Membership
from mgmt.cluster.ownership import Ownership
from mgmt.core.db import Database
from mgmt.core.extensions import ExtensionRegistry
from mgmt.core.stuck import StuckResource, StuckResourceFinder

log = logging.getLogger(__name__)


class StuckSweeper:
    def __init__(
        self,
        *,
        db: Database,
        extensions: ExtensionRegistry,
        ownership: Ownership,
        membership: Membership,
        jobs: JobRunner,
    ) -> None:
        self.db = db
        self.extensions = extensions
        self.ownership = ownership
        self.membership = membership
        self.jobs = jobs
        self.settled = 0  # settle jobs submitted (status, tests)

    async def find(self) -> list[StuckResource]:
        """Every stuck resource, whoever owns it (what ``GetStuckResources`` shows)."""
        found: list[StuckResource] = []
        for finder in self.extensions.get(StuckResourceFinder):
            found.extend(await self.db.run_unfenced(finder.find))
        return found

    async def scan(self, partitions: frozenset[int] | None = None) -> int:
        """Settle the stuck resources of ``partitions`` (default: all held); how many were found."""
        held = self.ownership.held if partitions is None else partitions & self.ownership.held
        if not held:
            return 0
        ring = self.membership.ring
        mine = [r for r in await self.find() if ring.partition(r.uuid) in held]
        for resource in mine:
            job = await self.jobs.submit(resource.settle_with, {"uuid": resource.uuid}, resource.uuid)
            self.settled += 1
            log.warning(
                "%s %s is %s with no job acting on it: settling it (job %s)",
                resource.resource_type,
                resource.uuid,
                resource.state,
                job,
            )
        return len(mine)
