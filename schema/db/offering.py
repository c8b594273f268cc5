"""Offerings: the sizes VMs (instance offerings) and data disks (disk offerings) come in."""

from __future__ import annotations

from sqlalchemy import BigInteger, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from schema.db.base import Base, ResourceMixin


class InstanceOffering(ResourceMixin, Base):
    __tablename__ = "instance_offering"
    resource_type = "instanceOffering"

    cpu_num: Mapped[int] = mapped_column(Integer)
    memory_size: Mapped[int] = mapped_column(BigInteger)
    allocator_strategy: Mapped[str | None] = mapped_column(String(64))
    type: Mapped[str] = mapped_column(String(32), default="UserVm")
    state: Mapped[str] = mapped_column(String(32), index=True)


class DiskOffering(ResourceMixin, Base):
    __tablename__ = "disk_offering"
    resource_type = "diskOffering"

    disk_size: Mapped[int] = mapped_column(BigInteger)
    allocator_strategy: Mapped[str | None] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(32), index=True)
