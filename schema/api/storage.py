"""Primary storage (volumes; in a zone, attached to its clusters) and backup storage (images;
attached to zones). Capacities are bytes."""

from __future__ import annotations

import re
from typing import Annotated, ClassVar, Literal

from pydantic import AfterValidator, Field

from schema.api.base import (
    ApiMessage,
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
)
from schema.api.cluster import StateEvent
from schema.api.host import Address, Password, SshCredentials, SshKey, SshPort, Username, check_address

PrimaryStorageType = Literal["LocalStorage", "NFS", "SharedMountPoint"]
BackupStorageType = Literal["Sftp", "LocalDir"]
StorageState = Literal["Enabled", "Disabled"]
StorageStatus = Literal["Connecting", "Connected", "Disconnected"]
MAX_CAPACITY = 1 << 60  # 1 EiB: beyond any real device, far below BIGINT

_NFS_URL = re.compile(r"^(?P<host>[^:/\s]+|\[[0-9A-Fa-f:.]+\]):(?P<path>/.*)$")


def check_path(value: str) -> str:
    """An absolute POSIX directory path without '..' or empty segments, normalised (no trailing /)."""
    if not value.startswith("/") or "\0" in value or any(c.isspace() for c in value):
        raise ValueError("expected an absolute path without spaces")
    trimmed = value.rstrip("/") or "/"
    if trimmed != "/" and any(p in ("", ".", "..") for p in trimmed.split("/")[1:]):
        raise ValueError("the path must not contain '.', '..' or empty segments")
    return trimmed


def check_nfs_url(value: str) -> str:
    """``host:/export/path``, as mount.nfs takes it."""
    match = _NFS_URL.match(value)
    if match is None:
        raise ValueError("expected host:/export/path")
    host = match["host"]
    host = f"[{check_address(host[1:-1])}]" if host.startswith("[") else check_address(host)
    return f"{host}:{check_path(match['path'])}"


DirectoryPath = Annotated[str, Field(min_length=1, max_length=1024), AfterValidator(check_path)]
NfsUrl = Annotated[str, Field(min_length=4, max_length=1280), AfterValidator(check_nfs_url)]
Capacity = Annotated[int, Field(ge=1, le=MAX_CAPACITY, description="bytes")]


# ---------------------------------------------------------------- primary storage


class PrimaryStorageInventory(Inventory):
    zone_uuid: str
    type: PrimaryStorageType
    url: str
    state: StorageState
    status: StorageStatus
    total_capacity: int
    available_capacity: int
    attached_cluster_uuids: list[str] = Field(default_factory=list)


class PrimaryStorageReply(Reply):
    inventory: PrimaryStorageInventory


class AddLocalPrimaryStorage(CreateMessage):
    """Local disks of the hosts, at ``url`` on each. Until host agents report the disks' size, the
    capacity is the one given here."""

    service: ClassVar[str] = "storage"
    admin_only: ClassVar[bool] = True
    reply = PrimaryStorageReply

    zone_uuid: Uuid
    name: Name
    description: Description = None
    url: DirectoryPath
    total_capacity: Capacity


class AddNfsPrimaryStorage(CreateMessage):
    """An NFS export (``host:/export``) that the cluster's hosts mount. Its capacity is reported by
    the hosts that mount it (a later issue); ``totalCapacity`` sets it until then (default 0)."""

    service: ClassVar[str] = "storage"
    admin_only: ClassVar[bool] = True
    reply = PrimaryStorageReply

    zone_uuid: Uuid
    name: Name
    description: Description = None
    url: NfsUrl
    total_capacity: int = Field(default=0, ge=0, le=MAX_CAPACITY, description="bytes")


class AddSharedMountPointPrimaryStorage(CreateMessage):
    """A directory that the operator has mounted at ``url`` on every host of the clusters it is
    attached to (a cluster filesystem, an iSCSI/FC LUN with OCFS2/GFS2, a share mounted by the
    operator): hosts use it as local storage, but its files are the same on every host, so its VMs
    can live-migrate. As in ZStack, ringstack mounts nothing; ``totalCapacity`` is its size."""

    service: ClassVar[str] = "storage"
    admin_only: ClassVar[bool] = True
    reply = PrimaryStorageReply

    zone_uuid: Uuid
    name: Name
    description: Description = None
    url: DirectoryPath
    total_capacity: Capacity


class AttachPrimaryStorageToCluster(ApiMessage):
    service: ClassVar[str] = "storage"
    admin_only: ClassVar[bool] = True
    resource_field: ClassVar[str | None] = "primary_storage_uuid"
    reply = PrimaryStorageReply

    primary_storage_uuid: Uuid
    cluster_uuid: Uuid


class DetachPrimaryStorageFromCluster(ApiMessage):
    service: ClassVar[str] = "storage"
    admin_only: ClassVar[bool] = True
    resource_field: ClassVar[str | None] = "primary_storage_uuid"
    reply = PrimaryStorageReply

    primary_storage_uuid: Uuid
    cluster_uuid: Uuid


class UpdatePrimaryStorage(ResourceMessage):
    service: ClassVar[str] = "storage"
    admin_only: ClassVar[bool] = True
    reply = PrimaryStorageReply

    name: Name | None = None
    description: Description = None


class ChangePrimaryStorageState(ResourceMessage):
    service: ClassVar[str] = "storage"
    admin_only: ClassVar[bool] = True
    reply = PrimaryStorageReply

    state_event: StateEvent


class DeletePrimaryStorage(DeleteMessage):
    """Permissive refuses while the storage is attached to clusters; Enforcing detaches it first."""

    service: ClassVar[str] = "storage"
    admin_only: ClassVar[bool] = True
    reply = EmptyReply


class QueryPrimaryStorage(QueryMessage):
    service: ClassVar[str] = "storage"
    admin_only: ClassVar[bool] = True
    reply = QueryReply


# ---------------------------------------------------------------- backup storage


class BackupStorageInventory(Inventory):
    type: BackupStorageType
    url: str
    hostname: str | None = None
    ssh_port: int | None = None
    username: str | None = None
    state: StorageState
    status: StorageStatus
    status_reason: str | None = None
    total_capacity: int
    available_capacity: int
    attached_zone_uuids: list[str] = Field(default_factory=list)


class BackupStorageReply(Reply):
    inventory: BackupStorageInventory


class AddSftpBackupStorage(SshCredentials, CreateMessage):
    """A directory on a remote machine reached over SSH/SFTP. The node logs in when adding it (and
    remembers the host key: later connections must present the same one), creates the directory,
    and takes the capacity from ``totalCapacity`` or else from ``df`` there."""

    service: ClassVar[str] = "storage"
    admin_only: ClassVar[bool] = True
    reply = BackupStorageReply

    name: Name
    description: Description = None
    hostname: Address
    username: Username = "root"
    password: Password | None = None
    ssh_key: SshKey | None = None
    ssh_port: SshPort = 22
    url: DirectoryPath
    total_capacity: Capacity | None = None


class AddLocalDirBackupStorage(CreateMessage):
    """A directory on the management node itself, for all-in-one set-ups (every management node
    must see the same directory, e.g. one node, or a shared mount). The node creates it; capacity
    is ``totalCapacity`` or else the size of the file system it is on."""

    service: ClassVar[str] = "storage"
    admin_only: ClassVar[bool] = True
    reply = BackupStorageReply

    name: Name
    description: Description = None
    url: DirectoryPath
    total_capacity: Capacity | None = None


class AttachBackupStorageToZone(ApiMessage):
    service: ClassVar[str] = "storage"
    admin_only: ClassVar[bool] = True
    resource_field: ClassVar[str | None] = "backup_storage_uuid"
    reply = BackupStorageReply

    backup_storage_uuid: Uuid
    zone_uuid: Uuid


class DetachBackupStorageFromZone(ApiMessage):
    service: ClassVar[str] = "storage"
    admin_only: ClassVar[bool] = True
    resource_field: ClassVar[str | None] = "backup_storage_uuid"
    reply = BackupStorageReply

    backup_storage_uuid: Uuid
    zone_uuid: Uuid


class UpdateBackupStorage(ResourceMessage):
    service: ClassVar[str] = "storage"
    admin_only: ClassVar[bool] = True
    reply = BackupStorageReply

    name: Name | None = None
    description: Description = None


class ChangeBackupStorageState(ResourceMessage):
    service: ClassVar[str] = "storage"
    admin_only: ClassVar[bool] = True
    reply = BackupStorageReply

    state_event: StateEvent


class ReconnectBackupStorage(ResourceMessage):
    """Check the storage again (log in, directory writable); status Connected or Disconnected."""

    service: ClassVar[str] = "storage"
    admin_only: ClassVar[bool] = True
    reply = BackupStorageReply


class DeleteBackupStorage(DeleteMessage):
    """Permissive refuses while images have their only copy here; Enforcing deletes those images.
    Zone attachments, and references of images with copies elsewhere, go either way."""

    service: ClassVar[str] = "storage"
    admin_only: ClassVar[bool] = True
    reply = EmptyReply


class QueryBackupStorage(QueryMessage):
    service: ClassVar[str] = "storage"
    admin_only: ClassVar[bool] = True
    reply = QueryReply
