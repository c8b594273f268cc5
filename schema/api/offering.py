"""Offerings: instance offerings (CPU and memory of a VM) and disk offerings (size of a data disk).

Any account may create them; an account sees its own and those shared with it (the admin shares
the common ones). Sizes are bytes.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field

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
from schema.api.cluster import StateEvent

MiB = 1 << 20
TiB = 1 << 40
OfferingState = Literal["Enabled", "Disabled"]
HostAllocatorStrategy = Literal[
    "DefaultHostAllocatorStrategy",
    "LastHostPreferredAllocatorStrategy",
    "LeastVmPreferredHostAllocatorStrategy",
    "MinimumCPUUsageHostAllocatorStrategy",
    "MinimumMemoryUsageHostAllocatorStrategy",
]
PrimaryStorageAllocatorStrategy = Literal["DefaultPrimaryStorageAllocationStrategy"]

CpuNum = Annotated[int, Field(ge=1, le=1024)]
MemorySize = Annotated[int, Field(ge=16 * MiB, le=64 * TiB, description="bytes")]
DiskSize = Annotated[int, Field(ge=MiB, le=1024 * TiB, description="bytes")]


class InstanceOfferingInventory(Inventory):
    cpu_num: int
    memory_size: int
    allocator_strategy: str | None = None
    type: str
    state: OfferingState


class InstanceOfferingReply(Reply):
    inventory: InstanceOfferingInventory


class CreateInstanceOffering(CreateMessage):
    service: ClassVar[str] = "offering"
    reply = InstanceOfferingReply

    name: Name
    description: Description = None
    cpu_num: CpuNum
    memory_size: MemorySize
    allocator_strategy: HostAllocatorStrategy | None = None


class UpdateInstanceOffering(ResourceMessage):
    """Name, description and allocator; the size of an offering is fixed once VMs may use it."""

    service: ClassVar[str] = "offering"
    reply = InstanceOfferingReply

    name: Name | None = None
    description: Description = None
    allocator_strategy: HostAllocatorStrategy | None = None


class ChangeInstanceOfferingState(ResourceMessage):
    service: ClassVar[str] = "offering"
    reply = InstanceOfferingReply

    state_event: StateEvent


class DeleteInstanceOffering(DeleteMessage):
    service: ClassVar[str] = "offering"
    reply = EmptyReply


class QueryInstanceOffering(QueryMessage):
    service: ClassVar[str] = "offering"
    reply = QueryReply


class DiskOfferingInventory(Inventory):
    disk_size: int
    allocator_strategy: str | None = None
    state: OfferingState


class DiskOfferingReply(Reply):
    inventory: DiskOfferingInventory


class CreateDiskOffering(CreateMessage):
    service: ClassVar[str] = "offering"
    reply = DiskOfferingReply

    name: Name
    description: Description = None
    disk_size: DiskSize
    allocator_strategy: PrimaryStorageAllocatorStrategy | None = None


class UpdateDiskOffering(ResourceMessage):
    service: ClassVar[str] = "offering"
    reply = DiskOfferingReply

    name: Name | None = None
    description: Description = None
    allocator_strategy: PrimaryStorageAllocatorStrategy | None = None


class ChangeDiskOfferingState(ResourceMessage):
    service: ClassVar[str] = "offering"
    reply = DiskOfferingReply

    state_event: StateEvent


class DeleteDiskOffering(DeleteMessage):
    service: ClassVar[str] = "offering"
    reply = EmptyReply


class QueryDiskOffering(QueryMessage):
    service: ClassVar[str] = "offering"
    reply = QueryReply
