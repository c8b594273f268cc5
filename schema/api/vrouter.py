"""Virtual routers: offerings (the appliance's image, management and public networks, size) and
VIPs (public addresses from a public L3's IPAM, used by one service at a time), by ZStack's names.

Offerings are the admin's. VIPs are created by any account on a public L3 it can see (a shared
public network), counted by the ``vip.num`` quota; an account sees and deletes its own.
"""

from __future__ import annotations

from ipaddress import IPv4Network
from typing import Annotated, ClassVar, Literal

from pydantic import Field, model_validator

from schema.api.base import (
    ApiMessage,
    CreateMessage,
    DeleteMessage,
    Description,
    Inventory,
    Name,
    QueryMessage,
    QueryReply,
    Reply,
    ResourceMessage,
    Uuid,
)
from schema.api.network import IPv4
from schema.api.offering import CpuNum, MemorySize

VipUse = Literal["Eip", "PortForwarding"]


class VirtualRouterOfferingInventory(Inventory):
    zone_uuid: str
    image_uuid: str
    management_network_uuid: str
    public_network_uuid: str
    cpu_num: int
    memory_size: int
    is_default: bool
    state: str


class VirtualRouterOfferingReply(Reply):
    inventory: VirtualRouterOfferingInventory


class CreateVirtualRouterOffering(CreateMessage):
    """The appliance a guest L3's virtual router is made of. ``isDefault``: the zone's offering
    for L3s that name none (one per zone; a new default replaces the old)."""

    service: ClassVar[str] = "vrouter"
    admin_only: ClassVar[bool] = True
    reply = VirtualRouterOfferingReply

    name: Name
    description: Description = None
    zone_uuid: Uuid
    image_uuid: Uuid
    management_network_uuid: Uuid
    public_network_uuid: Uuid
    cpu_num: CpuNum
    memory_size: MemorySize
    is_default: bool = False


class DeleteVirtualRouterOffering(DeleteMessage):
    service: ClassVar[str] = "vrouter"
    admin_only: ClassVar[bool] = True


class QueryVirtualRouterOffering(QueryMessage):
    service: ClassVar[str] = "vrouter"
    admin_only: ClassVar[bool] = True
    reply = QueryReply


class VipInventory(Inventory):
    l3_network_uuid: str
    ip: str
    gateway: str
    netmask: str
    use_for: VipUse | None = None
    state: str


class VipReply(Reply):
    inventory: VipInventory


class CreateVip(CreateMessage):
    """An address of the public L3 ``l3NetworkUuid`` (``requiredIp``, or one IPAM picks)."""

    service: ClassVar[str] = "vrouter"
    reply = VipReply

    name: Name
    description: Description = None
    l3_network_uuid: Uuid
    required_ip: IPv4 | None = None


class DeleteVip(DeleteMessage):
    """Permissive refuses a VIP in use (``VROUTER.VIP_IN_USE``); its address goes back to IPAM."""

    service: ClassVar[str] = "vrouter"


class QueryVip(QueryMessage):
    service: ClassVar[str] = "vrouter"
    reply = QueryReply


# ---------------------------------------------------------------------- the VR appliances


class VirtualRouterVmInventory(Inventory):
    """A guest L3's virtual router: an appliance VM (its ``vm_instance`` has the same uuid,
    owned by the admin) with NICs on the management, public and guest L3s."""

    guest_l3_network_uuid: str
    offering_uuid: str
    management_network_uuid: str
    public_network_uuid: str
    public_ip: str | None = None
    guest_ip: str | None = None
    status: str  # Creating | Connected | Disconnected
    status_reason: str | None = None
    state: str | None = None  # its VM's state


class VirtualRouterVmReply(Reply):
    inventory: VirtualRouterVmInventory


class QueryVirtualRouterVm(QueryMessage):
    service: ClassVar[str] = "vrouter"
    admin_only: ClassVar[bool] = True
    reply = QueryReply


class ReconnectVirtualRouter(ApiMessage):
    """Reconnect a VR's agent and push it the whole desired state (``vrouter.sync``)."""

    service: ClassVar[str] = "vrouter"
    admin_only: ClassVar[bool] = True
    resource_field: ClassVar[str | None] = "vm_instance_uuid"
    reply = VirtualRouterVmReply

    vm_instance_uuid: Uuid


class EnsureVirtualRouter(ApiMessage):
    """Between management nodes: the VR of a guest L3, created if it has none. Routed to the L3's
    owner and run in the L3's serial queue, so concurrent first VM creates make one VR."""

    service: ClassVar[str] = "vrouter"
    resource_field: ClassVar[str | None] = "l3_network_uuid"
    internal: ClassVar[bool] = True
    reply = VirtualRouterVmReply

    l3_network_uuid: Uuid


class SyncVirtualRouter(ApiMessage):
    """Between management nodes: push a VR its whole desired state, computed from the database;
    routed to the VR's owner, in its serial queue."""

    service: ClassVar[str] = "vrouter"
    resource_field: ClassVar[str | None] = "vm_instance_uuid"
    internal: ClassVar[bool] = True
    reply = VirtualRouterVmReply

    vm_instance_uuid: Uuid


# ---------------------------------------------------------------------- port forwarding

PfProtocol = Literal["TCP", "UDP"]
PortNumber = Annotated[int, Field(ge=1, le=65535)]


class PortForwardingRuleInventory(Inventory):
    vip_uuid: str
    vip_ip: str
    protocol_type: PfProtocol
    vip_port_start: int
    vip_port_end: int
    private_port_start: int
    private_port_end: int
    allowed_cidr: str | None = None
    vm_nic_uuid: str | None = None
    guest_ip: str | None = None
    state: str


class PortForwardingRuleReply(Reply):
    inventory: PortForwardingRuleInventory


class CreatePortForwardingRule(CreateMessage):
    """ZStack's fields: the VIP's ports ``vipPortStart``-``vipPortEnd`` (end defaults to start) to
    the NIC's ``privatePortStart``-``privatePortEnd`` (default: the same ports), ``protocolType``
    TCP or UDP, ``allowedCidr`` the sources let in (default: any). With ``vmNicUuid`` it is
    attached at once. The VIP becomes ``useFor`` PortForwarding (one service per VIP)."""

    service: ClassVar[str] = "vrouter"
    reply = PortForwardingRuleReply

    name: Name
    description: Description = None
    vip_uuid: Uuid
    vip_port_start: PortNumber
    vip_port_end: PortNumber | None = None
    private_port_start: PortNumber | None = None
    private_port_end: PortNumber | None = None
    protocol_type: PfProtocol
    allowed_cidr: IPv4Network | None = None
    vm_nic_uuid: Uuid | None = None

    @model_validator(mode="after")
    def _ranges(self) -> CreatePortForwardingRule:
        vip_end = self.vip_port_end or self.vip_port_start
        private_start = self.private_port_start or self.vip_port_start
        private_end = self.private_port_end or private_start + (vip_end - self.vip_port_start)
        if vip_end < self.vip_port_start or private_end < private_start:
            raise ValueError("a port range ends before it starts")
        if vip_end - self.vip_port_start != private_end - private_start:
            raise ValueError("the VIP and private port ranges differ in length")
        if private_end > 65535:
            raise ValueError("the private port range ends past 65535")
        self.vip_port_end, self.private_port_start, self.private_port_end = (
            vip_end,
            private_start,
            private_end,
        )
        return self


class AttachPortForwardingRule(ApiMessage):
    service: ClassVar[str] = "vrouter"
    resource_field: ClassVar[str | None] = "rule_uuid"
    reply = PortForwardingRuleReply

    rule_uuid: Uuid
    vm_nic_uuid: Uuid


class DetachPortForwardingRule(ResourceMessage):
    service: ClassVar[str] = "vrouter"
    reply = PortForwardingRuleReply


class DeletePortForwardingRule(DeleteMessage):
    service: ClassVar[str] = "vrouter"


class QueryPortForwardingRule(QueryMessage):
    service: ClassVar[str] = "vrouter"
    reply = QueryReply
