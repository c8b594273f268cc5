"""Clusters: hosts of one hypervisor type in one zone; primary storage and L2 networks attach to them."""

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
    Uuid,
)

HypervisorType = Literal["KVM", "Simulator"]
ClusterState = Literal["Enabled", "Disabled"]
StateEvent = Literal["enable", "disable"]


class ClusterInventory(Inventory):
    zone_uuid: str
    hypervisor_type: HypervisorType
    state: ClusterState


class ClusterReply(Reply):
    inventory: ClusterInventory


class CreateCluster(CreateMessage):
    service: ClassVar[str] = "cluster"
    admin_only: ClassVar[bool] = True
    reply = ClusterReply

    zone_uuid: Uuid
    name: Name
    description: Description = None
    hypervisor_type: HypervisorType


class UpdateCluster(ResourceMessage):
    service: ClassVar[str] = "cluster"
    admin_only: ClassVar[bool] = True
    reply = ClusterReply

    name: Name | None = None
    description: Description = None


class ChangeClusterState(ResourceMessage):
    service: ClassVar[str] = "cluster"
    admin_only: ClassVar[bool] = True
    reply = ClusterReply

    state_event: StateEvent


class DeleteCluster(DeleteMessage):
    """Permissive refuses while the cluster has hosts; Enforcing deletes them too. Attached primary
    storage is detached either way."""

    service: ClassVar[str] = "cluster"
    admin_only: ClassVar[bool] = True
    reply = EmptyReply


class QueryCluster(QueryMessage):
    service: ClassVar[str] = "cluster"
    admin_only: ClassVar[bool] = True
    reply = QueryReply
