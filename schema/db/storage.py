"""Primary storage (where volumes live; belongs to a zone, attached to its clusters) and backup
storage (where images live; zone-independent, attached to zones)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, DateTime, ForeignKey, Integer, String, Text, func
from sqlalchemy.orm import Mapped, mapped_column, relationship

from schema.db.base import UUID_LENGTH, Base, ResourceMixin

_CAPACITY = "available_capacity >= 0 AND available_capacity <= total_capacity"


class PrimaryStorage(ResourceMixin, Base):
    __tablename__ = "primary_storage"
    resource_type = "primaryStorage"
    __table_args__ = (CheckConstraint(_CAPACITY, name="capacity"),)

    zone_uuid: Mapped[str] = mapped_column(String(UUID_LENGTH), ForeignKey("zone.uuid"), index=True)
    type: Mapped[str] = mapped_column(String(32), index=True)  # LocalStorage | NFS | SharedMountPoint
    url: Mapped[str] = mapped_column(String(2048))
    state: Mapped[str] = mapped_column(String(32), index=True)
    status: Mapped[str] = mapped_column(String(32), index=True)
    total_capacity: Mapped[int] = mapped_column(BigInteger, default=0)
    available_capacity: Mapped[int] = mapped_column(BigInteger, default=0)

    # Read-only view; attachments are written as PrimaryStorageClusterRef rows.
    cluster_refs: Mapped[list[PrimaryStorageClusterRef]] = relationship(
        viewonly=True, lazy="selectin", order_by="PrimaryStorageClusterRef.created_at"
    )

    @property
    def attached_cluster_uuids(self) -> list[str]:
        return [ref.cluster_uuid for ref in self.cluster_refs]


class PrimaryStorageClusterRef(Base):
    __tablename__ = "primary_storage_cluster_ref"

    primary_storage_uuid: Mapped[str] = mapped_column(
        String(UUID_LENGTH), ForeignKey("primary_storage.uuid"), primary_key=True
    )
    cluster_uuid: Mapped[str] = mapped_column(
        String(UUID_LENGTH), ForeignKey("cluster.uuid"), primary_key=True, index=True
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class BackupStorage(ResourceMixin, Base):
    __tablename__ = "backup_storage"
    resource_type = "backupStorage"
    __table_args__ = (CheckConstraint(_CAPACITY, name="capacity"),)

    type: Mapped[str] = mapped_column(String(32), index=True)  # Sftp | LocalDir
    url: Mapped[str] = mapped_column(String(2048))  # the directory images go to
    hostname: Mapped[str | None] = mapped_column(String(255))  # Sftp only
    ssh_port: Mapped[int | None] = mapped_column(Integer)
    username: Mapped[str | None] = mapped_column(String(255))
    state: Mapped[str] = mapped_column(String(32), index=True)
    status: Mapped[str] = mapped_column(String(32), index=True)
    status_reason: Mapped[str | None] = mapped_column(Text)
    total_capacity: Mapped[int] = mapped_column(BigInteger, default=0)
    available_capacity: Mapped[int] = mapped_column(BigInteger, default=0)

    zone_refs: Mapped[list[BackupStorageZoneRef]] = relationship(
        viewonly=True, lazy="selectin", order_by="BackupStorageZoneRef.created_at"
    )

    @property
    def attached_zone_uuids(self) -> list[str]:
        return [ref.zone_uuid for ref in self.zone_refs]


class BackupStorageZoneRef(Base):
    __tablename__ = "backup_storage_zone_ref"

    backup_storage_uuid: Mapped[str] = mapped_column(
        String(UUID_LENGTH), ForeignKey("backup_storage.uuid"), primary_key=True
    )
    zone_uuid: Mapped[str] = mapped_column(
        String(UUID_LENGTH), ForeignKey("zone.uuid"), primary_key=True, index=True
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class BackupStorageSecret(Base):
    """SSH credentials and the host key seen at the first connection (trust on first use), kept
    out of every inventory. Stored in clear: logging in needs them."""

    __tablename__ = "backup_storage_secret"

    backup_storage_uuid: Mapped[str] = mapped_column(
        String(UUID_LENGTH), ForeignKey("backup_storage.uuid", ondelete="CASCADE"), primary_key=True
    )
    password: Mapped[str | None] = mapped_column(Text)
    ssh_key: Mapped[str | None] = mapped_column(Text)
    host_key: Mapped[str | None] = mapped_column(Text)
