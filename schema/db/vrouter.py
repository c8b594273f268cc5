"""Virtual routers: their offerings (what a VR appliance is made from) and VIPs (public addresses
the VR answers for, each used by one service at a time)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    func,
)
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


class VirtualRouterVm(Base):
    """A VM that is a guest L3's virtual router (ZStack's ``ApplianceVmVO``/``VirtualRouterVmVO``):
    the appliance's own row beside its ``vm_instance`` row (same uuid). The unique guest L3 makes
    "exactly one VR per guest L3" a database invariant, whatever races above it."""

    __tablename__ = "virtual_router_vm"

    # Its uuid is its VM's (so it is in the uuid namespace as that VM), and its owner is the VM's.
    uuid: Mapped[str] = mapped_column(String(UUID_LENGTH), primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    description: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )
    guest_l3_network_uuid: Mapped[str] = mapped_column(
        String(UUID_LENGTH), ForeignKey("l3_network.uuid"), unique=True
    )
    offering_uuid: Mapped[str] = mapped_column(
        String(UUID_LENGTH), ForeignKey("virtual_router_offering.uuid"), index=True
    )
    management_network_uuid: Mapped[str] = mapped_column(String(UUID_LENGTH))
    public_network_uuid: Mapped[str] = mapped_column(String(UUID_LENGTH))
    public_ip: Mapped[str | None] = mapped_column(String(15))
    guest_ip: Mapped[str | None] = mapped_column(String(15))
    # Creating (its create chain runs) | Connected | Disconnected (like a host's status)
    status: Mapped[str] = mapped_column(String(32), index=True, default="Creating")
    status_reason: Mapped[str | None] = mapped_column(String(1024))
    last_sync_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class PortForwardingRule(ResourceMixin, Base):
    """ZStack's ``PortForwardingRuleVO``: a VIP's port range forwarded to a VM NIC's ports."""

    __tablename__ = "port_forwarding_rule"
    resource_type = "portForwardingRule"

    vip_uuid: Mapped[str] = mapped_column(String(UUID_LENGTH), ForeignKey("vip.uuid"), index=True)
    vip_ip: Mapped[str] = mapped_column(String(15))
    protocol_type: Mapped[str] = mapped_column(String(8))
    vip_port_start: Mapped[int] = mapped_column(Integer)
    vip_port_end: Mapped[int] = mapped_column(Integer)
    private_port_start: Mapped[int] = mapped_column(Integer)
    private_port_end: Mapped[int] = mapped_column(Integer)
    allowed_cidr: Mapped[str | None] = mapped_column(String(18))
    vm_nic_uuid: Mapped[str | None] = mapped_column(String(UUID_LENGTH), index=True)
    guest_ip: Mapped[str | None] = mapped_column(String(15))
    state: Mapped[str] = mapped_column(String(32), default="Enabled")
