"""Zones: the top of the resource tree; clusters, backup storage and networks live in one."""

from __future__ import annotations

from typing import ClassVar, Literal

from schema.api.base import (
    CreateMessage,
    DeleteMessage,
    Description,
    EmptyReply,
    Inventory,
    Name,
    QueryMessage,
    QueryReply,
    Reply,
    ResourceMessage,
)

ZoneState = Literal["Enabled", "Disabled"]


class ZoneInventory(Inventory):
    state: ZoneState


class ZoneReply(Reply):
    inventory: ZoneInventory


class CreateZone(CreateMessage):
    service: ClassVar[str] = "zone"
    admin_only: ClassVar[bool] = True
    reply = ZoneReply

    name: Name
    description: Description = None


class UpdateZone(ResourceMessage):
    service: ClassVar[str] = "zone"
    admin_only: ClassVar[bool] = True
    reply = ZoneReply

    name: Name | None = None
    description: Description = None


class ChangeZoneState(ResourceMessage):
    service: ClassVar[str] = "zone"
    admin_only: ClassVar[bool] = True
    reply = ZoneReply

    state_event: Literal["enable", "disable"]


class DeleteZone(DeleteMessage):
    service: ClassVar[str] = "zone"
    admin_only: ClassVar[bool] = True
    reply = EmptyReply


class QueryZone(QueryMessage):
    service: ClassVar[str] = "zone"
    reply = QueryReply
