from __future__ import annotations

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from schema.db.base import UUID_LENGTH, Base, ResourceMixin


class Cluster(ResourceMixin, Base):
    """A group of hosts of one hypervisor type in one zone; storage and L2 networks attach to it."""

    __tablename__ = "cluster"
    resource_type = "cluster"

    zone_uuid: Mapped[str] = mapped_column(String(UUID_LENGTH), ForeignKey("zone.uuid"), index=True)
    hypervisor_type: Mapped[str] = mapped_column(String(32))  # KVM | Simulator
    state: Mapped[str] = mapped_column(String(32), default="Enabled")
