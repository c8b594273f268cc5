"""VM instances, their volumes and NICs: ZStack's VM and volume APIs."""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar, Literal

from pydantic import ConfigDict, Field, model_validator

from schema.api.base import (
    ApiMessage,
    CreateMessage,
    Description,
    EmptyReply,
    Inventory,
    Name,
    QueryMessage,
    QueryReply,
    Reply,
    ResourceMessage,
    Uuid,
    WireModel,
)

MAX_DISK = 64 << 40  # 64 TiB


class VmNicInventory(WireModel):
    model_config = ConfigDict(from_attributes=True)

    uuid: str
    vm_instance_uuid: str
    l3_network_uuid: str
    ip: str | None = None
    netmask: str | None = None
    gateway: str | None = None
    mac: str
    device_id: int
    created_at: datetime


class VolumeInventory(Inventory):
    vm_instance_uuid: str | None = None
    primary_storage_uuid: str | None = None
    disk_offering_uuid: str | None = None
    image_uuid: str | None = None
    host_uuid: str | None = None
    type: str
    format: str
    size: int
    install_path: str | None = None
    device_id: int | None = None
    state: str
    status: str


class VmInstanceInventory(Inventory):
    zone_uuid: str
    cluster_uuid: str | None = None
    host_uuid: str | None = None
    last_host_uuid: str | None = None
    instance_offering_uuid: str | None = None
    image_uuid: str | None = None
    root_volume_uuid: str | None = None
    default_l3_network_uuid: str | None = None
    hypervisor_type: str
    platform: str
    cpu_num: int
    memory_size: int
    state: str
    allocator_strategy: str | None = None
    vm_nics: list[VmNicInventory] = Field(default_factory=list)
    all_volumes: list[VolumeInventory] = Field(default_factory=list)


class VmReply(Reply):
    inventory: VmInstanceInventory


class VolumeReply(Reply):
    inventory: VolumeInventory


class VmMessage(ResourceMessage, abstract=True):
    service: ClassVar[str] = "vm"
    reply: ClassVar[type[Reply]] = VmReply


class VmByFieldMessage(ApiMessage, abstract=True):
    """About a VM named by ``vmInstanceUuid`` (ZStack's spelling for these APIs)."""

    service: ClassVar[str] = "vm"
    resource_field: ClassVar[str | None] = "vm_instance_uuid"
    reply: ClassVar[type[Reply]] = VmReply

    vm_instance_uuid: Uuid


# ---------------------------------------------------------------------- create


class CreateVmInstance(CreateMessage):
    service: ClassVar[str] = "vm"
    reply = VmReply

    name: Name
    description: Description = None
    instance_offering_uuid: Uuid
    image_uuid: Uuid
    l3_network_uuids: list[Uuid] = Field(min_length=1, max_length=16)
    default_l3_network_uuid: Uuid | None = None
    root_disk_offering_uuid: Uuid | None = None
    root_disk_size: int | None = Field(default=None, gt=0, le=MAX_DISK)
    data_disk_offering_uuids: list[Uuid] = Field(default_factory=list, max_length=24)
    zone_uuid: Uuid | None = None
    cluster_uuid: Uuid | None = None
    host_uuid: Uuid | None = None
    primary_storage_uuid_for_root_volume: Uuid | None = None
    strategy: Literal["InstantStart", "CreateStopped"] = "InstantStart"

    @model_validator(mode="after")
    def _default_l3_is_one_of_them(self) -> CreateVmInstance:
        if len(set(self.l3_network_uuids)) != len(self.l3_network_uuids):
            raise ValueError("l3NetworkUuids has duplicates")
        if (
            self.default_l3_network_uuid is not None
            and self.default_l3_network_uuid not in self.l3_network_uuids
        ):
            raise ValueError("defaultL3NetworkUuid must be one of l3NetworkUuids")
        if self.root_disk_offering_uuid is not None and self.root_disk_size is not None:
            raise ValueError("give rootDiskOfferingUuid or rootDiskSize, not both")
        return self


# ---------------------------------------------------------------------- lifecycle


class StartVmInstance(VmMessage):
    host_uuid: Uuid | None = None


class StopVmInstance(VmMessage):
    type: Literal["grace", "cold"] = "grace"
    timeout: float = Field(
        default=60, gt=0, le=3600, description="seconds of graceful shutdown before forcing"
    )


class RebootVmInstance(VmMessage):
    pass


class DestroyVmInstance(VmMessage):
    """Destroy: stop it and free its host; volumes and IPs are kept until expunged (recoverable)."""


class RecoverVmInstance(VmMessage):
    pass


class ExpungeVmInstance(VmMessage):
    reply = EmptyReply


class SettleVmInstanceReply(Reply):
    from_state: str
    to_state: str  # "Deleted": an interrupted create rolled back
    action: Literal["unchanged", "rolledForward", "rolledBack"]
    inventory: VmInstanceInventory | None = None


class SettleVmInstance(VmMessage):
    """Settle a VM left in a transitional state (Starting, Stopping, ...) with no job acting on it:
    its host says what runs, and the VM is rolled forward to that, or back; a create that never
    finished is rolled back (the host's VM and volumes deleted, everything it held given back).
    The owner node does this by itself on takeover and periodically (``GetStuckResources`` lists
    what it finds); operators may ask for it at once. A VM in a stable state is left unchanged."""

    reply = SettleVmInstanceReply


class UpdateVmInstance(VmMessage):
    name: Name | None = None
    description: Description = None


class MigrateVm(VmByFieldMessage):
    host_uuid: Uuid | None = None


class GetVmMigrationCandidateHosts(VmByFieldMessage):
    mutating: ClassVar[bool] = False
    reply = QueryReply


class ChangeInstanceOffering(VmByFieldMessage):
    """A stopped VM takes the new size at once; a running one at its next start."""

    instance_offering_uuid: Uuid


class GetVmConsoleAddressReply(Reply):
    protocol: str
    hostname: str
    port: int


class GetVmConsoleAddress(VmMessage):
    mutating: ClassVar[bool] = False
    reply = GetVmConsoleAddressReply


# ---------------------------------------------------------------------- volumes


class CreateDataVolume(CreateMessage):
    service: ClassVar[str] = "vm"
    reply = VolumeReply

    name: Name
    description: Description = None
    disk_offering_uuid: Uuid | None = None
    disk_size: int | None = Field(default=None, gt=0, le=MAX_DISK)
    primary_storage_uuid: Uuid | None = None

    @model_validator(mode="after")
    def _one_size(self) -> CreateDataVolume:
        if (self.disk_offering_uuid is None) == (self.disk_size is None):
            raise ValueError("give exactly one of diskOfferingUuid and diskSize")
        return self


class AttachDataVolumeToVm(VmByFieldMessage):
    reply = VolumeReply

    volume_uuid: Uuid


class DetachDataVolumeFromVm(VmByFieldMessage):
    reply = VolumeReply

    volume_uuid: Uuid


class DeleteDataVolume(ResourceMessage):
    """Delete a data volume that is attached to no VM."""

    service: ClassVar[str] = "vm"
    reply = EmptyReply


# ---------------------------------------------------------------------- NICs


class AttachL3NetworkToVm(VmByFieldMessage):
    l3_network_uuid: Uuid
    static_ip: str | None = Field(default=None, max_length=64)


class DetachL3NetworkFromVm(VmByFieldMessage):
    vm_nic_uuid: Uuid


# ---------------------------------------------------------------------- queries


class QueryVmInstance(QueryMessage):
    service: ClassVar[str] = "vm"
    reply = QueryReply


class QueryVolume(QueryMessage):
    service: ClassVar[str] = "vm"
    reply = QueryReply


class QueryVmNic(QueryMessage):
    service: ClassVar[str] = "vm"
    reply = QueryReply


# ---------------------------------------------------------------------- between nodes


class VmStateReported(ResourceMessage):
    """An agent's report that a VM changed state on its own, routed to the VM's owner."""

    service: ClassVar[str] = "vm"
    internal: ClassVar[bool] = True
    reply = EmptyReply

    host_uuid: Uuid
    state: Literal["Running", "Stopped", "Paused", "Crashed", "Absent"]
    reason: str = Field(default="", max_length=1024)
