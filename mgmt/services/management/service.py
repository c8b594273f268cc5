"""Management nodes and jobs: QueryManagementNode, QueryJob, CancelJob, GetStuckResources."""

from __future__ import annotations

from typing import Any

from mgmt.cluster.jobs import JobRunner
from mgmt.cluster.stuck import StuckSweeper
from mgmt.core.db import Database
from mgmt.core.query import QueryTarget, run_query
from mgmt.core.service import CallContext, Service, handler
from mgmt.core.stuck import last_jobs
from schema.api.base import QueryReply
from schema.api.management import (
    CancelJob,
    CancelJobReply,
    GetStuckResources,
    GetStuckResourcesReply,
    JobInventory,
    ManagementNodeInventory,
    QueryJob,
    QueryManagementNode,
    StuckResourceInventory,
)
from schema.db.management import Job, ManagementNodeRecord

NODES = QueryTarget.for_model(ManagementNodeRecord, ManagementNodeInventory)
JOBS = QueryTarget.for_model(Job, JobInventory)


class ManagementService(Service):
    name = "management"

    db: Database
    jobs: JobRunner
    stuck: StuckSweeper

    @handler(QueryManagementNode, serial=False)
    async def query_nodes(self, msg: QueryManagementNode, ctx: CallContext) -> QueryReply:
        return await self.db.run(run_query, NODES, msg)

    @handler(QueryJob, serial=False)
    async def query_jobs(self, msg: QueryJob, ctx: CallContext) -> QueryReply:
        return await self.db.run(run_query, JOBS, msg, ctx.account)

    @handler(CancelJob, serial=False)
    async def cancel_job(self, msg: CancelJob, ctx: CallContext) -> CancelJobReply:
        state: Any = await self.jobs.cancel(msg.uuid, ctx.account)
        return CancelJobReply(state=state)

    @handler(GetStuckResources, serial=False)
    async def stuck_resources(self, msg: GetStuckResources, ctx: CallContext) -> GetStuckResourcesReply:
        found = await self.stuck.find()
        jobs = await self.db.run(last_jobs, [r.uuid for r in found])
        return GetStuckResourcesReply(
            inventories=[
                StuckResourceInventory(
                    resource_type=r.resource_type,
                    uuid=r.uuid,
                    state=r.state,
                    since=r.since,
                    settle_with=r.settle_with,
                    last_job=jobs.get(r.uuid),
                )
                for r in found
            ]
        )
