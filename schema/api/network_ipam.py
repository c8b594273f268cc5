"""IP ranges of L3 networks and IP address management (IPv4 for now).

Range rules, as ZStack's: ``startIp <= endIp``, both in the one network the netmask gives (/1 to
/30), neither the network nor the broadcast address, no reserved block (multicast, class E,
loopback, link-local, 0/8); the gateway in that network but outside the range. Rules that need
the database (no overlap with the L3's other ranges or those of other L3s on the same L2, one
CIDR and one gateway per L3) are checked by the service.

The address arithmetic is ``schema.ipv4`` (pure, standard library only), shared with the
allocator so that validation and allocation agree.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, ClassVar

from pydantic import ConfigDict, Field, ValidationInfo, field_validator, model_validator

from schema import ipv4
from schema.api.base import (
    CreateMessage,
    DeleteMessage,
    Description,
    EmptyReply,
    Name,
    QueryMessage,
    QueryReply,
    Reply,
    Uuid,
    WireModel,
)
from schema.api.network import IpRangeInventory, IPv4, L3NetworkMessage


class IpRangeReply(Reply):
    inventory: IpRangeInventory


class AddIpRange(CreateMessage):
    service: ClassVar[str] = "ipam"
    reply = IpRangeReply

    l3_network_uuid: Uuid
    name: Name
    description: Description = None
    # Declared in the order their checks depend on each other, so each error names its field.
    start_ip: IPv4
    end_ip: IPv4
    netmask: IPv4
    gateway: IPv4

    @field_validator("end_ip")
    @classmethod
    def _end_after_start(cls, value: str, info: ValidationInfo) -> str:
        start = info.data.get("start_ip")
        if start is not None:
            ipv4.check_bounds(ipv4.to_int(start), ipv4.to_int(value))
        return value

    @field_validator("netmask")
    @classmethod
    def _one_network(cls, value: str, info: ValidationInfo) -> str:
        prefix = ipv4.netmask_prefix(value)
        start, end = info.data.get("start_ip"), info.data.get("end_ip")
        if start is None or end is None:
            ipv4.check_prefix(prefix)
        else:
            ipv4.check_netmask(ipv4.to_int(start), ipv4.to_int(end), prefix)
        return value

    @field_validator("gateway")
    @classmethod
    def _gateway_outside_range(cls, value: str, info: ValidationInfo) -> str:
        start, end, netmask = (info.data.get(k) for k in ("start_ip", "end_ip", "netmask"))
        if start is not None and end is not None and netmask is not None:
            ipv4.check_gateway(
                ipv4.to_int(start), ipv4.to_int(end), ipv4.netmask_prefix(netmask), ipv4.to_int(value)
            )
        return value

    def spec(self) -> ipv4.RangeSpec:
        return ipv4.RangeSpec(
            start=ipv4.to_int(self.start_ip),
            end=ipv4.to_int(self.end_ip),
            gateway=ipv4.to_int(self.gateway),
            prefix=ipv4.netmask_prefix(self.netmask),
        )


class AddIpRangeByNetworkCidr(CreateMessage):
    """The whole network as one range: the gateway is its first usable address, the range the
    rest (``192.168.1.0/24`` -> gateway .1, range .2-.254)."""

    service: ClassVar[str] = "ipam"
    reply = IpRangeReply

    l3_network_uuid: Uuid
    name: Name
    description: Description = None
    network_cidr: Annotated[str, Field(max_length=18)]

    @field_validator("network_cidr")
    @classmethod
    def _cidr(cls, value: str) -> str:
        return str(ipv4.parse_cidr(value))

    def spec(self) -> ipv4.RangeSpec:
        return ipv4.range_from_cidr(self.network_cidr)


class DeleteIpRange(DeleteMessage):
    """Permissive refuses while addresses of the range are allocated; Enforcing releases them."""

    service: ClassVar[str] = "ipam"
    reply = EmptyReply


class QueryIpRange(QueryMessage):
    """A normal account sees the ranges of the L3 networks it can see."""

    service: ClassVar[str] = "ipam"
    reply = QueryReply


# ---------------------------------------------------------------- IPAM reads


class CheckIpAvailabilityReply(Reply):
    available: bool
    # Why not: NotInRange (no range of the L3 holds it), Gateway, NetworkAddress,
    # BroadcastAddress, Used.
    reason: str | None = None


class CheckIpAvailability(L3NetworkMessage):
    service: ClassVar[str] = "ipam"
    mutating: ClassVar[bool] = False
    reply = CheckIpAvailabilityReply

    ip: IPv4


class FreeIpInventory(WireModel):
    ip: str
    gateway: str
    netmask: str
    ip_range_uuid: str


class GetFreeIpReply(Reply):
    inventories: list[FreeIpInventory]


class GetFreeIp(L3NetworkMessage):
    """Free addresses in ascending order, optionally of one range and from ``start`` on."""

    service: ClassVar[str] = "ipam"
    mutating: ClassVar[bool] = False
    reply = GetFreeIpReply

    ip_range_uuid: Uuid | None = None
    start: IPv4 | None = None
    limit: int = Field(default=100, ge=1, le=10_000)


class IpCapacityReply(Reply):
    total_capacity: int
    available_capacity: int
    used_ip_address_number: int


class GetIpAddressCapacity(L3NetworkMessage):
    """How many addresses the L3's ranges (or the listed ones among them) hold, free and used."""

    service: ClassVar[str] = "ipam"
    mutating: ClassVar[bool] = False
    reply = IpCapacityReply

    ip_range_uuids: list[Uuid] | None = Field(default=None, max_length=1000)


# ---------------------------------------------------------------- internal allocation


class UsedIpInventory(WireModel):
    model_config = ConfigDict(from_attributes=True)

    uuid: str
    l3_network_uuid: str
    ip_range_uuid: str
    ip: str
    gateway: str
    netmask: str
    owner_account_uuid: str | None = None
    used_for_uuid: str | None = None
    created_at: datetime


class UsedIpReply(Reply):
    inventory: UsedIpInventory


class InternalAllocateIp(CreateMessage):
    """INTERNAL (admin only; for operators, tests and services without a local transaction):
    allocate an address on an L3 network, as the VM service does for a NIC in its own
    transaction through ``mgmt.services.network.ipam.allocate_ip``.

    ``resourceUuid`` names the allocation (the ``used_ip`` row), so a re-run returns the same
    address. ``staticIp`` asks for one address (``L3.IP_IN_USE`` if taken, ``L3.IP_NOT_IN_RANGE``
    if no range of the L3 can give it). ``ownerAccountUuid`` is who the address counts against
    (the caller by default).
    """

    service: ClassVar[str] = "ipam"
    admin_only: ClassVar[bool] = True
    reply = UsedIpReply

    l3_network_uuid: Uuid
    static_ip: IPv4 | None = None
    used_for_uuid: Uuid | None = None
    owner_account_uuid: Uuid | None = None
    allocator_strategy: str | None = Field(default=None, max_length=128)

    @field_validator("allocator_strategy")
    @classmethod
    def _known_strategy(cls, value: str | None) -> str | None:
        if value is not None:
            ipv4.get_strategy(value)
        return value

    @model_validator(mode="after")
    def _static_or_strategy(self) -> InternalAllocateIp:
        if self.static_ip is not None and self.allocator_strategy is not None:
            raise ValueError("give staticIp or allocatorStrategy, not both")
        return self


class ReleaseIpReply(Reply):
    released: bool  # False: the address was not allocated (a retried release)


class InternalReleaseIp(L3NetworkMessage):
    """INTERNAL (admin only): give an address back. An address that is not allocated is
    ``released: false`` (retry-safe); one outside every range of the L3 is ``L3.IP_NOT_IN_RANGE``."""

    service: ClassVar[str] = "ipam"
    admin_only: ClassVar[bool] = True
    # Not a job on the L3's owner: a release touches one row, is idempotent, and the unique
    # constraint (not ownership) keeps IPAM consistent, so releases on one L3 run in parallel
    # on whichever node takes them instead of queueing in the L3's lane.
    resource_field: ClassVar[str | None] = None
    reply = ReleaseIpReply

    ip: IPv4
