"""Network service providers (VirtualRouter, Flat, SecurityGroup) and enabling their services
(DHCP, DNS, SNAT, EIP, PortForwarding, ...) on L3 networks, as ZStack does."""

from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import Field

from schema.api.base import Inventory, QueryMessage, QueryReply, Uuid
from schema.api.network import L3NetworkMessage, L3NetworkReply

ServiceType = Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9]{0,63}$")]
# providerUuid -> the service types to enable (or disable) from it.
ServiceMap = Annotated[
    dict[Uuid, Annotated[list[ServiceType], Field(min_length=1, max_length=32)]],
    Field(min_length=1, max_length=16),
]


class NetworkServiceProviderInventory(Inventory):
    type: str
    network_service_types: list[str] = Field(default_factory=list)


class AttachNetworkServiceToL3Network(L3NetworkMessage):
    """Enable service types from providers. A type can come from one provider per L3: asking for
    it from another is ``L3.NETWORK_SERVICE_CONFLICT``; a type the provider does not give is
    ``L3.NETWORK_SERVICE_UNSUPPORTED``. Enabling what is already enabled changes nothing."""

    reply = L3NetworkReply

    network_services: ServiceMap


class DetachNetworkServiceFromL3Network(L3NetworkMessage):
    """Disable service types; those not enabled from that provider are ignored (retry-safe)."""

    reply = L3NetworkReply

    network_services: ServiceMap


class QueryNetworkServiceProvider(QueryMessage):
    """Providers are a catalogue every account may read."""

    service: ClassVar[str] = "l3network"
    reply = QueryReply
