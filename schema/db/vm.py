"""VM instances, their volumes and NICs."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, ForeignKey, Index, Integer, String, UniqueConstraint, func
from sqlalchemy.orm import Mapped, mapped_column, relationship

from schema.db.base import UUID_LENGTH, Base, ResourceMixin


class VmInstance(ResourceMixin, Base):
    __tablename__ = "vm_instance"
    __table_args__ = (
        Index("ix_vm_instance_created_at", "created_at"),
        # LIKE 'prefix%' can use it whatever the database's collation (migration 0008)
        Index("ix_vm_instance_name_pattern", "name", postgresql_ops={"name": "varchar_pattern_ops"}),
        # sortBy=name pages read only the index (migration 0018)
        Index("ix_vm_instance_name_uuid", "name", "uuid"),
    )
    resource_type = "vm"

    zone_uuid: Mapped[str] = mapped_column(String(UUID_LENGTH), index=True)
    cluster_uuid: Mapped[str | None] = mapped_column(String(UUID_LENGTH), index=True)
    # Where it runs now (holding the host's CPU and memory), and where it last ran.
    host_uuid: Mapped[str | None] = mapped_column(String(UUID_LENGTH), index=True)
    last_host_uuid: Mapped[str | None] = mapped_column(String(UUID_LENGTH), index=True)
    instance_offering_uuid: Mapped[str | None] = mapped_column(String(UUID_LENGTH), index=True)
    image_uuid: Mapped[str | None] = mapped_column(String(UUID_LENGTH), index=True)
    root_volume_uuid: Mapped[str | None] = mapped_column(String(UUID_LENGTH))
    default_l3_network_uuid: Mapped[str | None] = mapped_column(String(UUID_LENGTH))
    hypervisor_type: Mapped[str] = mapped_column(String(32))
    platform: Mapped[str] = mapped_column(String(32), default="Linux")
    cpu_num: Mapped[int] = mapped_column(Integer)
    memory_size: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String(32), index=True)
    allocator_strategy: Mapped[str | None] = mapped_column(String(64))

    nic_rows: Mapped[list[VmNic]] = relationship(viewonly=True, lazy="selectin", order_by="VmNic.device_id")
    volume_rows: Mapped[list[Volume]] = relationship(
        viewonly=True,
        lazy="selectin",
        order_by="Volume.device_id",
        primaryjoin="VmInstance.uuid == Volume.vm_instance_uuid",
        foreign_keys="Volume.vm_instance_uuid",
    )

    @property
    def vm_nics(self) -> list[VmNic]:
        return list(self.nic_rows)

    @property
    def all_volumes(self) -> list[Volume]:
        return list(self.volume_rows)


class VmNic(Base):
    __tablename__ = "vm_nic"
    __table_args__ = (UniqueConstraint("mac"), UniqueConstraint("vm_instance_uuid", "device_id"))

    uuid: Mapped[str] = mapped_column(String(UUID_LENGTH), primary_key=True)
    vm_instance_uuid: Mapped[str] = mapped_column(
        String(UUID_LENGTH), ForeignKey("vm_instance.uuid"), index=True
    )
    l3_network_uuid: Mapped[str] = mapped_column(String(UUID_LENGTH), index=True)
    ip: Mapped[str | None] = mapped_column(String(64), index=True)
    netmask: Mapped[str | None] = mapped_column(String(64))
    gateway: Mapped[str | None] = mapped_column(String(64))
    mac: Mapped[str] = mapped_column(String(17))
    device_id: Mapped[int] = mapped_column(Integer)
    owner_account_uuid: Mapped[str | None] = mapped_column(String(UUID_LENGTH), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


class Volume(ResourceMixin, Base):
    __tablename__ = "volume"
    resource_type = "volume"

    vm_instance_uuid: Mapped[str | None] = mapped_column(String(UUID_LENGTH), index=True)
    primary_storage_uuid: Mapped[str | None] = mapped_column(String(UUID_LENGTH), index=True)
    disk_offering_uuid: Mapped[str | None] = mapped_column(String(UUID_LENGTH), index=True)
    image_uuid: Mapped[str | None] = mapped_column(String(UUID_LENGTH))
    type: Mapped[str] = mapped_column(String(16), index=True)  # Root | Data
    format: Mapped[str] = mapped_column(String(16), default="qcow2")
    size: Mapped[int] = mapped_column(BigInteger)
    install_path: Mapped[str | None] = mapped_column(String(2048))
    device_id: Mapped[int | None] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(32), default="Enabled")
    status: Mapped[str] = mapped_column(
        String(32), index=True
    )  # Creating | Ready | NotInstantiated | Deleted
    # The host whose local storage holds it (local primary storage only).
    host_uuid: Mapped[str | None] = mapped_column(String(UUID_LENGTH), index=True)
