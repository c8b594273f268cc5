"""Elastic IPs: a VIP (a public address) mapped one-to-one onto a VM NIC's private address, by the
network service provider of the NIC's L3 (the host itself for Flat, the VR for VirtualRouter)."""

from __future__ import annotations

from sqlalchemy import ForeignKey, String, select
from sqlalchemy.orm import Mapped, column_property, mapped_column

from schema.db.base import UUID_LENGTH, Base, ResourceMixin
from schema.db.vm import VmNic


class Eip(ResourceMixin, Base):
    __tablename__ = "eip"
    resource_type = "eip"

    # One EIP per VIP (the VIP's ``use_for`` says Eip while it exists); the VIP going takes it along.
    vip_uuid: Mapped[str] = mapped_column(
        String(UUID_LENGTH), ForeignKey("vip.uuid", ondelete="CASCADE"), unique=True
    )
    # The NIC it maps to, or None while detached; a NIC deleted (VM expunged, NIC detached)
    # leaves the EIP detached, as ZStack does.
    vm_nic_uuid: Mapped[str | None] = mapped_column(
        String(UUID_LENGTH), ForeignKey("vm_nic.uuid", ondelete="SET NULL"), index=True
    )
    vip_ip: Mapped[str] = mapped_column(String(15))  # a copy of the VIP's (which never changes)
    state: Mapped[str] = mapped_column(String(32), default="Enabled")
    # The NIC's address, read with the row (queryable; never stale when the NIC goes).
    guest_ip: Mapped[str | None] = column_property(
        select(VmNic.ip).where(VmNic.uuid == vm_nic_uuid).correlate_except(VmNic).scalar_subquery()
    )
