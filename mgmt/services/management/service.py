"""Management nodes and jobs: QueryManagementNode, QueryJob, CancelJob."""

from __future__ import annotations

from typing import Any

from mgmt.cluster import Cluster
from mgmt.core.db import Database
from mgmt.core.query import QueryTarget, run_query
from mgmt.core.service import CallContext, Service, handler
from schema.api.base import QueryReply
from schema.api.management import (
    CancelJob,
    CancelJobReply,
    JobInventory,
    ManagementNodeInventory,
    QueryJob,
    QueryManagementNode,
)
from schema.db.management import Job, ManagementNodeRecord

NODES = QueryTarget.for_model(ManagementNodeRecord, ManagementNodeInventory)
JOBS = QueryTarget.for_model(Job, JobInventory)


class ManagementService(Service):
    name = "management"

    db: Database
    cluster: Cluster

    @handler(QueryManagementNode, serial=False)
    async def query_nodes(self, msg: QueryManagementNode, ctx: CallContext) -> QueryReply:
        return await self.db.run(run_query, NODES, msg)

    @handler(QueryJob, serial=False)
    async def query_jobs(self, msg: QueryJob, ctx: CallContext) -> QueryReply:
        return await self.db.run(run_query, JOBS, msg, ctx.account)

    @handler(CancelJob, serial=False)
    async def cancel_job(self, msg: CancelJob, ctx: CallContext) -> CancelJobReply:
        state: Any = await self.cluster.jobs.cancel(msg.uuid, ctx.account)
        return CancelJobReply(state=state)
