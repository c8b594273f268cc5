"""VXLAN L2 networks, as ZStack names them: a pool on an underlay interface with VNI ranges, and
VXLAN networks taking a VNI from it. Attaching the pool to a cluster attaches its networks (their
hosts' VTEPs are their management IPs). All admin-only, like every L2 API."""

from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import Field, model_validator

from schema.api.base import CreateMessage, Description, Inventory, Name, QueryMessage, QueryReply, Reply, Uuid
from schema.api.network import L2NetworkReply, PhysicalInterface

Vni = Annotated[int, Field(ge=1, le=16777215)]


class CreateL2VxlanNetworkPool(CreateMessage):
    service: ClassVar[str] = "vxlan"
    admin_only: ClassVar[bool] = True
    reply = L2NetworkReply

    zone_uuid: Uuid
    name: Name
    description: Description = None
    physical_interface: PhysicalInterface  # the underlay interface, holding the hosts' VTEP addresses


class VniRangeInventory(Inventory):
    l2_network_uuid: str
    start_vni: int
    end_vni: int


class VniRangeReply(Reply):
    inventory: VniRangeInventory


class CreateVniRange(CreateMessage):
    service: ClassVar[str] = "vxlan"
    admin_only: ClassVar[bool] = True
    reply = VniRangeReply

    l2_network_uuid: Uuid  # the pool
    name: Name
    description: Description = None
    start_vni: Vni
    end_vni: Vni

    @model_validator(mode="after")
    def _ordered(self) -> CreateVniRange:
        if self.start_vni > self.end_vni:
            raise ValueError(f"startVni {self.start_vni} is above endVni {self.end_vni}")
        return self


class CreateL2VxlanNetwork(CreateMessage):
    """``vni``: a free one of the pool's ranges; without it, the lowest free one is taken."""

    service: ClassVar[str] = "vxlan"
    admin_only: ClassVar[bool] = True
    reply = L2NetworkReply

    pool_uuid: Uuid
    zone_uuid: Uuid | None = None
    name: Name
    description: Description = None
    vni: Vni | None = None


class QueryVniRange(QueryMessage):
    service: ClassVar[str] = "vxlan"
    reply = QueryReply
