"""Networks: L2 networks (broadcast domains on hosts' interfaces) and L3 networks on them.

IP ranges and IPAM are in ``network_ipam``, network service providers in ``network_service``.
Who may do what (enforced by ``mgmt.services.network``):

- L2 networks are infrastructure: every mutating L2 API is admin-only.
- L3 networks: an admin creates any (Public, Private, System). A normal account may create a
  Private, non-system L3 on an L2 it can see (one shared with it), and then owns it: its ranges,
  DNS and services are its to change. Public and system L3s are made by admins and shared.
"""

from __future__ import annotations

from ipaddress import AddressValueError, IPv4Address
from typing import Annotated, ClassVar, Literal

from pydantic import AfterValidator, ConfigDict, Field, model_validator

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
    WireModel,
)


def _ipv4(value: str) -> str:
    try:
        return str(IPv4Address(value))
    except AddressValueError:
        raise ValueError(f"{value!r} is not an IPv4 address") from None


# Dotted-quad IPv4 only (no integers, no leading zeros); kept as text in canonical form.
IPv4 = Annotated[str, AfterValidator(_ipv4), Field(max_length=15, json_schema_extra={"format": "ipv4"})]

# ---------------------------------------------------------------- L2

L2NetworkType = Literal["L2NoVlanNetwork", "L2VlanNetwork"]
# A Linux interface name (IFNAMSIZ: at most 15 characters): eth0, bond0, ens3f1, br-ex.
PhysicalInterface = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,14}$")]
Vlan = Annotated[int, Field(ge=1, le=4094)]


class L2NetworkInventory(Inventory):
    zone_uuid: str
    type: str
    physical_interface: str
    vlan: int | None = None
    vni: int | None = None  # L2VxlanNetwork
    pool_uuid: str | None = None  # L2VxlanNetwork: its L2VxlanNetworkPool
    attached_cluster_uuids: list[str] = Field(default_factory=list)


class L2NetworkReply(Reply):
    inventory: L2NetworkInventory


class CreateL2NoVlanNetwork(CreateMessage):
    service: ClassVar[str] = "l2network"
    admin_only: ClassVar[bool] = True
    reply = L2NetworkReply

    zone_uuid: Uuid
    name: Name
    description: Description = None
    physical_interface: PhysicalInterface


class CreateL2VlanNetwork(CreateMessage):
    """An 802.1Q VLAN on ``physicalInterface``; (zone, interface, vlan) is unique."""

    service: ClassVar[str] = "l2network"
    admin_only: ClassVar[bool] = True
    reply = L2NetworkReply

    zone_uuid: Uuid
    name: Name
    description: Description = None
    physical_interface: PhysicalInterface
    vlan: Vlan


class UpdateL2Network(ResourceMessage):
    service: ClassVar[str] = "l2network"
    admin_only: ClassVar[bool] = True
    reply = L2NetworkReply

    name: Name | None = None
    description: Description = None


class DeleteL2Network(DeleteMessage):
    """Permissive refuses while L3 networks are on it; Enforcing deletes them (and their ranges)."""

    service: ClassVar[str] = "l2network"
    admin_only: ClassVar[bool] = True
    reply = EmptyReply


class AttachL2NetworkToCluster(ApiMessage):
    service: ClassVar[str] = "l2network"
    admin_only: ClassVar[bool] = True
    resource_field: ClassVar[str | None] = "l2_network_uuid"
    reply = L2NetworkReply

    l2_network_uuid: Uuid
    cluster_uuid: Uuid


class DetachL2NetworkFromCluster(ApiMessage):
    service: ClassVar[str] = "l2network"
    admin_only: ClassVar[bool] = True
    resource_field: ClassVar[str | None] = "l2_network_uuid"
    reply = L2NetworkReply

    l2_network_uuid: Uuid
    cluster_uuid: Uuid


class QueryL2Network(QueryMessage):
    service: ClassVar[str] = "l2network"
    reply = QueryReply


# ---------------------------------------------------------------- L3

L3NetworkCategory = Literal["Public", "Private", "System"]
L3NetworkState = Literal["Enabled", "Disabled"]
# ZStack's valid (system, category) pairs.
VALID_SYSTEM_CATEGORY: frozenset[tuple[bool, str]] = frozenset(
    {(False, "Public"), (False, "Private"), (True, "Public"), (True, "System")}
)
# RFC 1123 host names: dot-separated labels of letters, digits and inner hyphens.
DnsDomain = Annotated[
    str,
    Field(
        max_length=253,
        pattern=r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$",
    ),
]


def check_system_category(system: bool, category: str) -> None:
    if (system, category) not in VALID_SYSTEM_CATEGORY:
        valid = ", ".join(f"system={s} category={c}" for s, c in sorted(VALID_SYSTEM_CATEGORY))
        raise ValueError(f"system={system} with category={category} is not allowed; valid: {valid}")


class IpRangeInventory(Inventory):
    l3_network_uuid: str
    start_ip: str
    end_ip: str
    netmask: str
    gateway: str
    network_cidr: str
    prefix_len: int
    ip_version: int


class NetworkServiceRefInventory(WireModel):
    """A service type enabled on an L3 network and the provider giving it."""

    model_config = ConfigDict(from_attributes=True)

    l3_network_uuid: str
    network_service_provider_uuid: str
    network_service_type: str


class L3NetworkInventory(Inventory):
    l2_network_uuid: str
    zone_uuid: str
    type: str
    state: L3NetworkState
    category: str
    system: bool
    dns_domain: str | None = None
    dns: list[str] = Field(default_factory=list)
    ip_ranges: list[IpRangeInventory] = Field(default_factory=list)
    network_services: list[NetworkServiceRefInventory] = Field(default_factory=list)


class L3NetworkReply(Reply):
    inventory: L3NetworkInventory


class CreateL3Network(CreateMessage):
    service: ClassVar[str] = "l3network"
    reply = L3NetworkReply

    l2_network_uuid: Uuid
    name: Name
    description: Description = None
    type: Literal["L3BasicNetwork"] = "L3BasicNetwork"
    system: bool = False
    category: L3NetworkCategory = "Private"
    dns_domain: DnsDomain | None = None

    @model_validator(mode="after")
    def _system_and_category(self) -> CreateL3Network:
        check_system_category(self.system, self.category)
        return self


class UpdateL3Network(ResourceMessage):
    """Changes what is given; the resulting (system, category) pair must be a valid one."""

    service: ClassVar[str] = "l3network"
    reply = L3NetworkReply

    name: Name | None = None
    description: Description = None
    system: bool | None = None
    category: L3NetworkCategory | None = None
    dns_domain: DnsDomain | None = None


class DeleteL3Network(DeleteMessage):
    """Its IP ranges, DNS and services go with it. Permissive refuses while IPs are allocated on it
    (or other resources, such as VM NICs, use it); Enforcing deletes those too."""

    service: ClassVar[str] = "l3network"
    reply = EmptyReply


class ChangeL3NetworkState(ResourceMessage):
    """A Disabled L3 hands out no new IPs; those already allocated stay."""

    service: ClassVar[str] = "l3network"
    reply = L3NetworkReply

    state_event: Literal["enable", "disable"]


class QueryL3Network(QueryMessage):
    service: ClassVar[str] = "l3network"
    reply = QueryReply


class L3NetworkMessage(ApiMessage, abstract=True):
    """A request about one L3 network, named by ``l3NetworkUuid`` (ZStack's field name)."""

    service: ClassVar[str] = "l3network"
    resource_field: ClassVar[str | None] = "l3_network_uuid"
    reply: ClassVar[type[Reply]] = L3NetworkReply

    l3_network_uuid: Uuid


class AddDnsToL3Network(L3NetworkMessage):
    """Appends a DNS server; a duplicate is refused (``L3.DNS_DUPLICATE``)."""

    dns: IPv4


class RemoveDnsFromL3Network(L3NetworkMessage):
    """Removing a DNS server that is not there succeeds, so a retry is safe."""

    dns: IPv4
