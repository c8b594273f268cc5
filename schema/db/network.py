"""Networks: L2 networks (and their cluster attachments), L3 networks with DNS, IP ranges, used IPs
and network services.

Child and reference rows (cluster refs, DNS, service refs, provider types) have no life of their
own: their foreign keys cascade at the database level, so deleting the parent row removes them.
Resource rows (L2, L3, IP range) are removed by the cascade rules of ``mgmt.services.network``,
and ``used_ip`` rows never cascade silently: the rules decide (Permissive refuses, Enforcing
deletes).

Relationships here are view-only: they exist to build inventories (``attachedClusterUuids``,
``ipRanges``, ``dns``, ``networkServices``), never to write. They load lazily, so loading a row
for a check costs one query; queries that return inventories load them for a whole page at
once (``selectinload``, see ``mgmt.services.network.common``).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    ForeignKeyConstraint,
    Integer,
    String,
    UniqueConstraint,
    func,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from schema.db.base import UUID_LENGTH, Base, ResourceMixin

IP_LENGTH = 64  # room for IPv6 text later

# Fixed uuids of the network service providers the 0006 migration seeds.
VIRTUAL_ROUTER_PROVIDER_UUID = "1be7aee8b56d5b9b9c765780604b7755"
FLAT_PROVIDER_UUID = "cad864e9d0565b79a3d4bebee541d6cd"
SECURITY_GROUP_PROVIDER_UUID = "3bba6298f0b7543b90f448801e5d7815"


if TYPE_CHECKING:
    from schema.db.vxlan import L2VxlanNetwork


class L2NetworkClusterRef(Base):
    """An L2 network attached to a cluster (its hosts get the bridge)."""

    __tablename__ = "l2_network_cluster_ref"

    l2_network_uuid: Mapped[str] = mapped_column(
        String(UUID_LENGTH), ForeignKey("l2_network.uuid", ondelete="CASCADE"), primary_key=True
    )
    cluster_uuid: Mapped[str] = mapped_column(
        String(UUID_LENGTH), ForeignKey("cluster.uuid", ondelete="CASCADE"), primary_key=True, index=True
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class L2Network(ResourceMixin, Base):
    """A broadcast domain on a physical interface of a zone's hosts.

    ``type`` is ``L2NoVlanNetwork`` or ``L2VlanNetwork`` (``vlan`` set); VXLAN pools and networks
    will be further types with their own columns.
    """

    __tablename__ = "l2_network"
    __table_args__ = (UniqueConstraint("zone_uuid", "physical_interface", "vlan"),)
    resource_type = "l2_network"

    zone_uuid: Mapped[str] = mapped_column(String(UUID_LENGTH), ForeignKey("zone.uuid"), index=True)
    type: Mapped[str] = mapped_column(String(32), index=True)
    physical_interface: Mapped[str] = mapped_column(String(64))
    vlan: Mapped[int | None] = mapped_column(Integer)

    cluster_refs: Mapped[list[L2NetworkClusterRef]] = relationship(
        viewonly=True, order_by=L2NetworkClusterRef.cluster_uuid
    )

    # A VXLAN network's VNI and pool (schema/db/vxlan.py); None for other types.
    vxlan_row: Mapped[L2VxlanNetwork | None] = relationship(
        "L2VxlanNetwork", viewonly=True, primaryjoin="L2Network.uuid == L2VxlanNetwork.uuid", uselist=False
    )

    @property
    def attached_cluster_uuids(self) -> list[str]:
        return [ref.cluster_uuid for ref in self.cluster_refs]

    @property
    def vni(self) -> int | None:
        return self.vxlan_row.vni if self.vxlan_row is not None else None

    @property
    def pool_uuid(self) -> str | None:
        return self.vxlan_row.pool_uuid if self.vxlan_row is not None else None


class IpRange(ResourceMixin, Base):
    """Addresses ``start_ip``..``end_ip`` of one subnet that IPAM may hand out on an L3 network.

    ``start_int``/``end_int`` are the same bounds as integers, for overlap checks in SQL.
    """

    __tablename__ = "ip_range"
    resource_type = "ip_range"

    l3_network_uuid: Mapped[str] = mapped_column(
        String(UUID_LENGTH), ForeignKey("l3_network.uuid"), index=True
    )
    start_ip: Mapped[str] = mapped_column(String(IP_LENGTH))
    end_ip: Mapped[str] = mapped_column(String(IP_LENGTH))
    netmask: Mapped[str] = mapped_column(String(IP_LENGTH))
    gateway: Mapped[str] = mapped_column(String(IP_LENGTH))
    network_cidr: Mapped[str] = mapped_column(String(IP_LENGTH))
    prefix_len: Mapped[int] = mapped_column(Integer)
    ip_version: Mapped[int] = mapped_column(Integer, default=4)
    start_int: Mapped[int] = mapped_column(BigInteger)
    end_int: Mapped[int] = mapped_column(BigInteger)


class L3NetworkDns(Base):
    __tablename__ = "l3_network_dns"

    l3_network_uuid: Mapped[str] = mapped_column(
        String(UUID_LENGTH), ForeignKey("l3_network.uuid", ondelete="CASCADE"), primary_key=True
    )
    dns: Mapped[str] = mapped_column(String(IP_LENGTH), primary_key=True)
    position: Mapped[int] = mapped_column(Integer)  # the order clients get them in


class NetworkServiceType(Base):
    """One service type (DHCP, EIP, ...) a provider can give."""

    __tablename__ = "network_service_type"

    provider_uuid: Mapped[str] = mapped_column(
        String(UUID_LENGTH), ForeignKey("network_service_provider.uuid", ondelete="CASCADE"), primary_key=True
    )
    service_type: Mapped[str] = mapped_column(String(64), primary_key=True)


class NetworkServiceProvider(ResourceMixin, Base):
    """Who implements network services: VirtualRouter, Flat, SecurityGroup (seeded by migration)."""

    __tablename__ = "network_service_provider"
    resource_type = "network_service_provider"

    type: Mapped[str] = mapped_column(String(64), unique=True)

    type_rows: Mapped[list[NetworkServiceType]] = relationship(
        viewonly=True, order_by=NetworkServiceType.service_type
    )

    @property
    def network_service_types(self) -> list[str]:
        return [row.service_type for row in self.type_rows]


class L3NetworkServiceRef(Base):
    """A service type enabled on an L3 network, and the provider that gives it.

    The primary key makes one provider per type per L3; the composite foreign key makes the
    provider's support for the type a database invariant.
    """

    __tablename__ = "l3_network_service"
    __table_args__ = (
        ForeignKeyConstraint(
            ["provider_uuid", "service_type"],
            ["network_service_type.provider_uuid", "network_service_type.service_type"],
        ),
    )

    l3_network_uuid: Mapped[str] = mapped_column(
        String(UUID_LENGTH), ForeignKey("l3_network.uuid", ondelete="CASCADE"), primary_key=True
    )
    service_type: Mapped[str] = mapped_column(String(64), primary_key=True)
    provider_uuid: Mapped[str] = mapped_column(String(UUID_LENGTH), index=True)

    # ZStack's inventory names
    @property
    def network_service_provider_uuid(self) -> str:
        return self.provider_uuid

    @property
    def network_service_type(self) -> str:
        return self.service_type


class L3Network(ResourceMixin, Base):
    __tablename__ = "l3_network"
    resource_type = "l3_network"

    l2_network_uuid: Mapped[str] = mapped_column(
        String(UUID_LENGTH), ForeignKey("l2_network.uuid"), index=True
    )
    zone_uuid: Mapped[str] = mapped_column(String(UUID_LENGTH), ForeignKey("zone.uuid"), index=True)
    type: Mapped[str] = mapped_column(String(32), default="L3BasicNetwork")
    state: Mapped[str] = mapped_column(String(32), default="Enabled", index=True)
    category: Mapped[str] = mapped_column(String(32), index=True)
    system: Mapped[bool] = mapped_column(Boolean, default=False)
    dns_domain: Mapped[str | None] = mapped_column(String(255))

    range_rows: Mapped[list[IpRange]] = relationship(viewonly=True, order_by=IpRange.start_int)
    dns_rows: Mapped[list[L3NetworkDns]] = relationship(viewonly=True, order_by=L3NetworkDns.position)
    service_rows: Mapped[list[L3NetworkServiceRef]] = relationship(
        viewonly=True, order_by=L3NetworkServiceRef.service_type
    )

    @property
    def ip_ranges(self) -> list[IpRange]:
        return list(self.range_rows)

    @property
    def dns(self) -> list[str]:
        return [row.dns for row in self.dns_rows]

    @property
    def network_services(self) -> list[L3NetworkServiceRef]:
        return list(self.service_rows)


class UsedIp(Base):
    """An address handed out on an L3 network.

    The unique constraint on (l3_network_uuid, ip) is what guarantees that no address is ever
    handed out twice, whichever node or transaction allocates it.
    """

    __tablename__ = "used_ip"
    __table_args__ = (UniqueConstraint("l3_network_uuid", "ip"),)

    uuid: Mapped[str] = mapped_column(String(UUID_LENGTH), primary_key=True)
    l3_network_uuid: Mapped[str] = mapped_column(String(UUID_LENGTH), ForeignKey("l3_network.uuid"))
    ip_range_uuid: Mapped[str] = mapped_column(String(UUID_LENGTH), ForeignKey("ip_range.uuid"), index=True)
    ip: Mapped[str] = mapped_column(String(IP_LENGTH))
    ip_int: Mapped[int] = mapped_column(BigInteger)
    gateway: Mapped[str] = mapped_column(String(IP_LENGTH))
    netmask: Mapped[str] = mapped_column(String(IP_LENGTH))
    owner_account_uuid: Mapped[str | None] = mapped_column(String(UUID_LENGTH), index=True)
    used_for_uuid: Mapped[str | None] = mapped_column(String(UUID_LENGTH), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
