"""The Flat provider's memory of what each host serves: which VMs' DHCP entries were last applied
on it, so a VM that left (migrated, stopped, deleted) is taken off the host it left."""

from __future__ import annotations

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from schema.db.base import UUID_LENGTH, Base


class FlatDhcpHostVm(Base):
    __tablename__ = "flat_dhcp_host_vm"

    host_uuid: Mapped[str] = mapped_column(
        String(UUID_LENGTH), ForeignKey("host.uuid", ondelete="CASCADE"), primary_key=True
    )
    vm_instance_uuid: Mapped[str] = mapped_column(String(UUID_LENGTH), primary_key=True, index=True)


class FlatEipHost(Base):
    """The EIPs last applied on each host (so a host that had some is told when it has none)."""

    __tablename__ = "flat_eip_host"

    host_uuid: Mapped[str] = mapped_column(
        String(UUID_LENGTH), ForeignKey("host.uuid", ondelete="CASCADE"), primary_key=True
    )
    eip_uuid: Mapped[str] = mapped_column(String(UUID_LENGTH), primary_key=True)
