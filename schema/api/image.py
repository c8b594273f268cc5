"""Images: VM templates and ISOs, imported from a URL onto backup storage.

``AddImage`` answers at once with the image ``Downloading``; the copy runs on the management node
(off the event loop) and ends with the image ``Ready`` or ``Error`` (``statusReason`` says why),
announced by an ``image.<uuid>.status`` event; poll ``QueryImage`` or await the event. Sources:
``http://``, ``https://``, and ``file://`` (admin accounts only: it reads the management node's
files).
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal, Self

from pydantic import ConfigDict, Field, model_validator

from schema.api.base import (
    CreateMessage,
    DeleteMessage,
    Description,
    EmptyReply,
    Inventory,
    Name,
    QueryMessage,
    QueryReply,
    Reply,
    ResourceMessage,
    Uuid,
    WireModel,
)
from schema.api.cluster import StateEvent

ImageFormat = Literal["qcow2", "raw", "iso"]
MediaType = Literal["RootVolumeTemplate", "DataVolumeTemplate", "ISO"]
Platform = Literal["Linux", "Windows", "Other"]
ImageState = Literal["Enabled", "Disabled"]
ImageStatus = Literal["Creating", "Downloading", "Ready", "Error", "Deleted"]
ImageUrl = Annotated[str, Field(min_length=8, max_length=2048, pattern=r"^(?i:file|https?)://\S+$")]
GuestOsType = Annotated[str, Field(min_length=1, max_length=255)]


class ImageBackupStorageRefInventory(WireModel):
    model_config = ConfigDict(from_attributes=True)

    backup_storage_uuid: str
    install_path: str
    status: str


class ImageInventory(Inventory):
    url: str
    format: ImageFormat
    media_type: MediaType
    platform: Platform
    guest_os_type: str | None = None
    system: bool
    state: ImageState
    status: ImageStatus
    status_reason: str | None = None
    size: int
    actual_size: int
    md5sum: str | None = None
    sha256: str | None = None
    backup_storage_refs: list[ImageBackupStorageRefInventory] = Field(default_factory=list)


class ImageReply(Reply):
    inventory: ImageInventory


class AddImage(CreateMessage):
    """Import an image onto every backup storage listed (all or none: a failure on one removes the
    copies on the others). ``md5sum``/``sha256``, when given, must match the bytes received."""

    service: ClassVar[str] = "image"
    reply = ImageReply

    name: Name
    description: Description = None
    url: ImageUrl
    format: ImageFormat
    media_type: MediaType = "RootVolumeTemplate"
    platform: Platform = "Linux"
    guest_os_type: GuestOsType | None = None
    system: bool = False
    backup_storage_uuids: list[Uuid] = Field(min_length=1, max_length=8)
    md5sum: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{32}$")
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{64}$")

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if (self.format == "iso") != (self.media_type == "ISO"):
            raise ValueError("format iso goes with mediaType ISO, and only with it")
        if len(set(self.backup_storage_uuids)) != len(self.backup_storage_uuids):
            raise ValueError("backupStorageUuids lists a backup storage twice")
        return self


class UpdateImage(ResourceMessage):
    service: ClassVar[str] = "image"
    reply = ImageReply

    name: Name | None = None
    description: Description = None
    platform: Platform | None = None
    guest_os_type: GuestOsType | None = None
    system: bool | None = None


class ChangeImageState(ResourceMessage):
    service: ClassVar[str] = "image"
    reply = ImageReply

    state_event: StateEvent


class DeleteImage(DeleteMessage):
    """Mark the image Deleted; its copies stay until ``ExpungeImage``, so ``RecoverImage`` can undo
    it. Deleting an image still downloading stops the download."""

    service: ClassVar[str] = "image"
    reply = EmptyReply


class RecoverImage(ResourceMessage):
    service: ClassVar[str] = "image"
    reply = ImageReply


class ExpungeImage(ResourceMessage):
    """Remove a Deleted image for good: its files on backup storage, its capacity, its record."""

    service: ClassVar[str] = "image"
    reply = EmptyReply


class QueryImage(QueryMessage):
    service: ClassVar[str] = "image"
    reply = QueryReply
