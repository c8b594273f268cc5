"""Virtual routers: their offerings (what a VR appliance is made from) and VIPs (public addresses
the VR answers for, each used by one service at a time)."""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from schema.db.base import UUID_LENGTH, Base, ResourceMixin


class VirtualRouterOffering(ResourceMixin, Base):
    __tablename__ = "virtual_router_offering"
    resource_type = "virtualRouterOffering"

    zone_uuid: Mapped[str] = mapped_column(String(UUID_LENGTH), ForeignKey("zone.uuid"), index=True)
    image_uuid: Mapped[str] = mapped_column(String(UUID_LENGTH), ForeignKey("image.uuid"), index=True)
    management_network_uuid: Mapped[str] = mapped_column(
        String(UUID_LENGTH), ForeignKey("l3_network.uuid"), index=True
    )
    public_network_uuid: Mapped[str] = mapped_column(
        String(UUID_LENGTH), ForeignKey("l3_network.uuid"), index=True
    )
    cpu_num: Mapped[int] = mapped_column(Integer)
    memory_size: Mapped[int] = mapped_column(BigInteger)
    is_default: Mapped[bool] = mapped_column(Boolean, default=False)
    state: Mapped[str] = mapped_column(String(32), index=True)


class Vip(ResourceMixin, Base):
    """A public address from an L3's IPAM (its ``used_ip`` row is ``usedForUuid`` = the VIP)."""

    __tablename__ = "vip"
    __table_args__ = (UniqueConstraint("l3_network_uuid", "ip"),)
    resource_type = "vip"

    l3_network_uuid: Mapped[str] = mapped_column(
        String(UUID_LENGTH), ForeignKey("l3_network.uuid"), index=True
    )
    ip: Mapped[str] = mapped_column(String(15))
    gateway: Mapped[str] = mapped_column(String(15))
    netmask: Mapped[str] = mapped_column(String(15))
    # The one service using it (Eip, PortForwarding), or None while free.
    use_for: Mapped[str | None] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(32), default="Enabled")
