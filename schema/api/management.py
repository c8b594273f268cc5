"""The management cluster seen through the API: its nodes and the jobs they run."""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar, Literal

from pydantic import Field

from schema.api.base import UUID_PATTERN, ApiMessage, Inventory, QueryMessage, QueryReply, Reply, WireModel


class ManagementNodeInventory(WireModel):
    uuid: str
    address: str
    state: str
    joined_at: datetime
    last_heartbeat: datetime
    lease_expires_at: datetime


class QueryManagementNode(QueryMessage):
    service: ClassVar[str] = "management"
    admin_only: ClassVar[bool] = True
    reply = QueryReply


class JobInventory(WireModel):
    uuid: str
    name: str
    resource_uuid: str
    state: str
    node_uuid: str | None = None
    attempts: int
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    cancel_requested: bool
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None


class QueryJob(QueryMessage):
    service: ClassVar[str] = "management"
    reply = QueryReply


class CancelJobReply(Reply):
    state: Literal["cancelled", "cancelling"]


class CancelJob(ApiMessage):
    """Cancel a job: at once while it waits; while it runs only if its operation can be cancelled
    (it then rolls back). The job's own caller gets ``SYS.CANCELLED``."""

    service: ClassVar[str] = "management"
    reply = CancelJobReply

    uuid: str = Field(pattern=UUID_PATTERN)


__all__ = ["Inventory"]


class StuckResourceInventory(WireModel):
    """A resource in a transitional state with no live job acting on it: its owner node settles it
    (``settleWith`` names the API, run as a durable job); until then operators see it here."""

    resource_type: str
    uuid: str
    state: str
    since: datetime | None = None
    settle_with: str
    last_job: dict[str, Any] | None = None  # uuid, name, state, error of the last job about it


class GetStuckResourcesReply(Reply):
    inventories: list[StuckResourceInventory]


class GetStuckResources(ApiMessage):
    service: ClassVar[str] = "management"
    admin_only: ClassVar[bool] = True
    mutating: ClassVar[bool] = False
    reply = GetStuckResourcesReply
