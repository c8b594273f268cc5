"""Virtual routers: offerings (the appliance's image, management and public networks, size) and
VIPs (public addresses from a public L3's IPAM, used by one service at a time), by ZStack's names.

Offerings are the admin's. VIPs are created by any account on a public L3 it can see (a shared
public network), counted by the ``vip.num`` quota; an account sees and deletes its own.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from schema.api.base import (
    CreateMessage,
    DeleteMessage,
    Description,
    Inventory,
    Name,
    QueryMessage,
    QueryReply,
    Reply,
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
