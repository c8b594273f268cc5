"""Images (VM templates and ISOs) and where their copies live on backup storage."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, DateTime, ForeignKey, String, Text, func
from sqlalchemy.orm import Mapped, mapped_column, relationship

from schema.db.base import UUID_LENGTH, Base, ResourceMixin


class Image(ResourceMixin, Base):
    __tablename__ = "image"
    resource_type = "image"

    url: Mapped[str] = mapped_column(Text)
    format: Mapped[str] = mapped_column(String(16))  # qcow2 | raw | iso
    media_type: Mapped[str] = mapped_column(String(32))  # RootVolumeTemplate | DataVolumeTemplate | ISO
    platform: Mapped[str] = mapped_column(String(32))
    guest_os_type: Mapped[str | None] = mapped_column(String(255))
    system: Mapped[bool] = mapped_column(Boolean, default=False)
    state: Mapped[str] = mapped_column(String(32), index=True)  # Enabled | Disabled
    status: Mapped[str] = mapped_column(String(32), index=True)  # Creating ... Deleted
    status_reason: Mapped[str | None] = mapped_column(Text)
    size: Mapped[int] = mapped_column(BigInteger, default=0)  # virtual size (qcow2), else file size
    actual_size: Mapped[int] = mapped_column(BigInteger, default=0)  # bytes on backup storage
    md5sum: Mapped[str | None] = mapped_column(String(32))
    sha256: Mapped[str | None] = mapped_column(String(64))

    # Read-only view; copies are written as ImageBackupStorageRef rows. Not named like the
    # inventory field, so the query API does not take the relationship for a column.
    bs_refs: Mapped[list[ImageBackupStorageRef]] = relationship(
        viewonly=True, lazy="selectin", order_by="ImageBackupStorageRef.created_at"
    )

    @property
    def backup_storage_refs(self) -> list[ImageBackupStorageRef]:
        return list(self.bs_refs)


class ImageBackupStorageRef(Base):
    __tablename__ = "image_backup_storage_ref"

    image_uuid: Mapped[str] = mapped_column(String(UUID_LENGTH), ForeignKey("image.uuid"), primary_key=True)
    backup_storage_uuid: Mapped[str] = mapped_column(
        String(UUID_LENGTH), ForeignKey("backup_storage.uuid"), primary_key=True, index=True
    )
    install_path: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(32))  # Downloading | Ready
    # Bytes reserved on the backup storage for this copy (released when it goes).
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
