"""Elastic IPs, by ZStack's names: a VIP mapped one-to-one onto a VM NIC (inbound to the VIP goes
to the NIC's address, the NIC's outbound leaves with the VIP as source). Any account creates them
from its own VIPs and attaches them to its own NICs; counted by the ``eip.num`` quota.

Who realises it is the network service provider of the NIC's L3 for ``EIP`` (Flat: the VM's host;
VirtualRouter: the L3's router); the VIP's L3 must be in the NIC's zone.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from schema.api.base import (
    ApiMessage,
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

SERVICE = "eip"
EipState = Literal["Enabled", "Disabled"]


class EipInventory(Inventory):
    vip_uuid: str
    vm_nic_uuid: str | None = None
    vip_ip: str
    guest_ip: str | None = None
    state: EipState


class EipReply(Reply):
    inventory: EipInventory


class CreateEip(CreateMessage):
    """An EIP on the free VIP ``vipUuid``, attached at once to ``vmNicUuid`` if given."""

    service: ClassVar[str] = SERVICE
    reply = EipReply

    name: Name
    description: Description = None
    vip_uuid: Uuid
    vm_nic_uuid: Uuid | None = None


class AttachEip(ApiMessage):
    """Map the detached EIP ``eipUuid`` onto the NIC ``vmNicUuid`` (one EIP per NIC)."""

    service: ClassVar[str] = SERVICE
    resource_field: ClassVar[str | None] = "eip_uuid"
    reply = EipReply

    eip_uuid: Uuid
    vm_nic_uuid: Uuid


class DetachEip(ResourceMessage):
    """Take the EIP off its NIC (a detached one: nothing to do)."""

    service: ClassVar[str] = SERVICE
    reply = EipReply


class UpdateEip(ResourceMessage):
    service: ClassVar[str] = SERVICE
    reply = EipReply

    name: Name | None = None
    description: Description = None


class ChangeEipState(ResourceMessage):
    """``disable`` takes the mapping off the data path and keeps the attachment; ``enable`` puts
    it back."""

    service: ClassVar[str] = SERVICE
    reply = EipReply

    state_event: Literal["enable", "disable"]


class DeleteEip(DeleteMessage):
    """Detaches it first (the provider removes the mapping); its VIP becomes free again."""

    service: ClassVar[str] = SERVICE
    reply = EmptyReply


class QueryEip(QueryMessage):
    service: ClassVar[str] = SERVICE
    reply = QueryReply
