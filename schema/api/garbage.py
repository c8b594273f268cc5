"""Pending clean-ups on hosts (ZStack's garbage collectors): what failed to be undone and is
retried until done. Operators (admins) list them and can trigger a retry."""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

from pydantic import Field

from schema.api.base import ApiMessage, QueryMessage, QueryReply, Reply, ResourceMessage, Uuid, WireModel


class GarbageCollectorInventory(WireModel):
    uuid: str
    resource_uuid: str  # the VM or volume it is about
    host_uuid: str
    command_name: str  # the agent command still to be sent, e.g. agent.volume.delete
    command_body: dict[str, Any]
    origin: str  # the operation step whose undo it is, e.g. attach-volume/create-volume
    attempts: int
    last_error: str | None = None
    next_attempt_at: datetime
    created_at: datetime


class QueryGarbageCollector(QueryMessage):
    service: ClassVar[str] = "garbage"
    admin_only: ClassVar[bool] = True
    reply = QueryReply


class TriggerGarbageCollectorReply(Reply):
    retried: int = Field(description="resources whose pending clean-ups were tried now")
    remaining: int = Field(description="clean-ups still pending afterwards")


class TriggerGarbageCollector(ApiMessage):
    """Retry pending clean-ups now: those of one host, of one resource, or all of them."""

    service: ClassVar[str] = "garbage"
    admin_only: ClassVar[bool] = True
    reply = TriggerGarbageCollectorReply

    host_uuid: Uuid | None = None
    resource_uuid: Uuid | None = None


class CleanUpResource(ResourceMessage):
    """Between nodes: run the pending clean-ups of one resource, on its owner, in its serial lane."""

    service: ClassVar[str] = "garbage"
    internal: ClassVar[bool] = True
    reply = TriggerGarbageCollectorReply

    due_only: bool = True  # False: retry now, whatever the back-off says (a host came back)
