"""Backup storage handlers: add (SFTP, local directory), attach/detach to zones, update, state,
reconnect, delete, query.

Adding one checks it for real before anything is stored: the node logs in (SFTP) or uses the
directory (LocalDir), creates the directory, writes a probe file and measures the file system.
That I/O runs in a worker thread, outside any transaction.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from sqlalchemy import delete, select, tuple_
from sqlalchemy.orm import Session

from bus.errors import RingstackError
from mgmt.core.access import load_visible
from mgmt.core.cascade import CascadeRegistry, CascadeRule, announce_deleted
from mgmt.core.db import Database, create_guard
from mgmt.core.events import EventPublisher
from mgmt.core.query import QueryTarget, Relation, run_query
from mgmt.core.resources import change_enabled_state, update_name_description
from mgmt.core.service import CallContext, handler
from mgmt.services.storage.backends import BackendSpec, Probe, backend_spec, probe
from mgmt.services.storage.errors import StorageError
from mgmt.services.storage.links import pair_ids, split_pairs
from mgmt.services.storage.sftp import SshTarget
from schema.api.base import EmptyReply, QueryReply
from schema.api.storage import (
    AddLocalDirBackupStorage,
    AddSftpBackupStorage,
    AttachBackupStorageToZone,
    BackupStorageInventory,
    BackupStorageReply,
    ChangeBackupStorageState,
    DeleteBackupStorage,
    DetachBackupStorageFromZone,
    QueryBackupStorage,
    ReconnectBackupStorage,
    UpdateBackupStorage,
)
from schema.db.image import Image, ImageBackupStorageRef
from schema.db.storage import BackupStorage, BackupStorageSecret, BackupStorageZoneRef
from schema.db.zone import Zone

KIND = "backupStorage"
QUERY = QueryTarget.for_model(
    BackupStorage,
    BackupStorageInventory,
    name="backupStorage",
    relations={
        "zone": Relation(
            "zone",
            BackupStorage.uuid,
            Zone.uuid,
            through=(BackupStorageZoneRef.backup_storage_uuid, BackupStorageZoneRef.zone_uuid),
        ),
        "image": Relation(
            "image",
            BackupStorage.uuid,
            Image.uuid,
            through=(ImageBackupStorageRef.backup_storage_uuid, ImageBackupStorageRef.image_uuid),
        ),
    },
)


def _inventory(bs: BackupStorage) -> BackupStorageInventory:
    return BackupStorageInventory.model_validate(bs, from_attributes=True)


def _zone_refs(session: Session, parent_kind: str, uuids: Sequence[str]) -> list[str]:
    ref = BackupStorageZoneRef
    column = ref.zone_uuid if parent_kind == "zone" else ref.backup_storage_uuid
    rows = session.execute(select(ref.backup_storage_uuid, ref.zone_uuid).where(column.in_(uuids)))
    return pair_ids((bs, zone) for bs, zone in rows)


def _delete_zone_refs(session: Session, ids: Sequence[str]) -> None:
    ref = BackupStorageZoneRef
    session.execute(delete(ref).where(tuple_(ref.backup_storage_uuid, ref.zone_uuid).in_(split_pairs(ids))))


# A backup storage is zone-independent: deleting a zone only detaches it, as in ZStack.
BACKUP_STORAGE_RULES = (
    CascadeRule(
        "backupStorageZoneRef", ("zone", KIND), _zone_refs, _delete_zone_refs, vetoes=(), resource=False
    ),
)


def _check_url_free(session: Session, bs_type: str, hostname: str | None, url: str) -> None:
    taken = session.scalars(
        select(BackupStorage.uuid).where(
            BackupStorage.type == bs_type, BackupStorage.hostname == hostname, BackupStorage.url == url
        )
        if hostname is not None
        else select(BackupStorage.uuid).where(
            BackupStorage.type == bs_type, BackupStorage.hostname.is_(None), BackupStorage.url == url
        )
    ).first()
    if taken is not None:
        where = f"{hostname}:{url}" if hostname else url
        raise RingstackError(
            StorageError.URL_IN_USE,
            f"backup storage {taken} already uses {where}",
            details={"uuid": taken, "url": url},
        )


class BackupStorageHandlers:
    db: Database
    events: EventPublisher
    cascade: CascadeRegistry

    # ------------------------------------------------------------------ add

    @handler(AddSftpBackupStorage)
    async def add_sftp_backup_storage(
        self, msg: AddSftpBackupStorage, ctx: CallContext
    ) -> BackupStorageReply:
        password = msg.password.get_secret_value() if msg.password else None
        ssh_key = msg.ssh_key.get_secret_value() if msg.ssh_key else None
        target = SshTarget(msg.hostname, msg.ssh_port, msg.username, password, ssh_key)
        row = BackupStorage(type="Sftp", hostname=msg.hostname, ssh_port=msg.ssh_port, username=msg.username)
        secret = BackupStorageSecret(password=password, ssh_key=ssh_key)
        return await self._add_backup_storage(msg, ctx, row, secret, BackendSpec("Sftp", msg.url, target))

    @handler(AddLocalDirBackupStorage)
    async def add_local_dir_backup_storage(
        self, msg: AddLocalDirBackupStorage, ctx: CallContext
    ) -> BackupStorageReply:
        row = BackupStorage(type="LocalDir")
        return await self._add_backup_storage(msg, ctx, row, None, BackendSpec("LocalDir", msg.url))

    async def _add_backup_storage(
        self,
        msg: AddSftpBackupStorage | AddLocalDirBackupStorage,
        ctx: CallContext,
        row: BackupStorage,
        secret: BackupStorageSecret | None,
        spec: BackendSpec,
    ) -> BackupStorageReply:
        uuid = ctx.new_resource_uuid(msg)

        def precheck(session: Session) -> BackupStorageInventory | None:
            existing = create_guard(session, BackupStorage, uuid, ctx)
            if existing is not None:
                return _inventory(existing)
            _check_url_free(session, row.type, row.hostname, msg.url)
            return None

        existing = await self.db.run(precheck)
        if existing is not None:
            return BackupStorageReply(inventory=existing)
        found: Probe = await asyncio.to_thread(probe, spec)
        total = msg.total_capacity if msg.total_capacity is not None else found.total

        def create(session: Session) -> BackupStorageInventory:
            _check_url_free(session, row.type, row.hostname, msg.url)
            row.uuid = uuid
            row.name = msg.name
            row.description = msg.description
            row.url = msg.url
            row.state = "Enabled"
            row.status = "Connected"
            row.total_capacity = total
            row.available_capacity = min(total, found.free)
            row.owner_account_uuid = ctx.account.uuid
            session.add(row)
            session.flush()
            if secret is not None:
                secret.backup_storage_uuid = uuid
                secret.host_key = found.host_key
                session.add(secret)
                session.flush()
            return _inventory(row)

        inv = await self.db.run(create)
        await self.events.resource_event(KIND, inv.uuid, "created", inv.to_wire())
        return BackupStorageReply(inventory=inv)

    # ------------------------------------------------------------------ zones

    @handler(AttachBackupStorageToZone)
    async def attach_backup_storage(
        self, msg: AttachBackupStorageToZone, ctx: CallContext
    ) -> BackupStorageReply:
        """Attaching twice is a no-op, so a retried attach is safe."""

        def attach(session: Session) -> tuple[BackupStorageInventory, bool]:
            bs = load_visible(session, BackupStorage, msg.backup_storage_uuid, ctx.account, KIND)
            zone = load_visible(session, Zone, msg.zone_uuid, ctx.account, "zone")
            if zone.uuid in bs.attached_zone_uuids:
                return _inventory(bs), False
            session.add(BackupStorageZoneRef(backup_storage_uuid=bs.uuid, zone_uuid=zone.uuid))
            session.flush()
            session.refresh(bs, ["zone_refs"])
            return _inventory(bs), True

        inv, changed = await self.db.run(attach)
        if changed:
            await self.events.resource_event(KIND, inv.uuid, "attached", inv.to_wire())
        return BackupStorageReply(inventory=inv)

    @handler(DetachBackupStorageFromZone)
    async def detach_backup_storage(
        self, msg: DetachBackupStorageFromZone, ctx: CallContext
    ) -> BackupStorageReply:
        """Detaching what is not attached is a no-op, so a retried detach is safe."""

        def detach(session: Session) -> tuple[BackupStorageInventory, bool]:
            bs = load_visible(session, BackupStorage, msg.backup_storage_uuid, ctx.account, KIND)
            ref = session.get(BackupStorageZoneRef, (bs.uuid, msg.zone_uuid))
            if ref is None:
                return _inventory(bs), False
            session.delete(ref)
            session.flush()
            session.refresh(bs, ["zone_refs"])
            return _inventory(bs), True

        inv, changed = await self.db.run(detach)
        if changed:
            await self.events.resource_event(KIND, inv.uuid, "detached", inv.to_wire())
        return BackupStorageReply(inventory=inv)

    # ------------------------------------------------------------------ update, state, reconnect

    @handler(UpdateBackupStorage)
    async def update_backup_storage(self, msg: UpdateBackupStorage, ctx: CallContext) -> BackupStorageReply:
        inv = await update_name_description(
            self.db,
            self.events,
            BackupStorage,
            KIND,
            msg.uuid,
            ctx.account,
            _inventory,
            msg.name,
            msg.description,
        )
        return BackupStorageReply(inventory=inv)

    @handler(ChangeBackupStorageState)
    async def change_backup_storage_state(
        self, msg: ChangeBackupStorageState, ctx: CallContext
    ) -> BackupStorageReply:
        inv = await change_enabled_state(
            self.db, self.events, BackupStorage, KIND, msg.uuid, ctx.account, _inventory, msg.state_event
        )
        return BackupStorageReply(inventory=inv)

    @handler(ReconnectBackupStorage)
    async def reconnect_backup_storage(
        self, msg: ReconnectBackupStorage, ctx: CallContext
    ) -> BackupStorageReply:
        """Check the storage again. A failure is recorded (Disconnected, with the reason) and
        answered as the error it was."""

        def load(session: Session) -> BackendSpec:
            return backend_spec(session, load_visible(session, BackupStorage, msg.uuid, ctx.account, KIND))

        spec = await self.db.run(load)
        failure: RingstackError | None = None
        try:
            found: Probe | None = await asyncio.to_thread(probe, spec)
        except RingstackError as exc:
            found, failure = None, exc

        def record(session: Session) -> tuple[BackupStorageInventory, bool]:
            bs = load_visible(session, BackupStorage, msg.uuid, ctx.account, KIND)
            before = (bs.status, bs.status_reason)
            bs.status = "Connected" if failure is None else "Disconnected"
            bs.status_reason = None if failure is None else f"{failure.code}: {failure.message}"
            if found is not None and found.host_key is not None:
                secret = session.get(BackupStorageSecret, bs.uuid)
                if secret is not None and secret.host_key is None:
                    secret.host_key = found.host_key
            session.flush()
            return _inventory(bs), before != (bs.status, bs.status_reason)

        inv, changed = await self.db.run(record)
        if changed:
            await self.events.resource_event(KIND, inv.uuid, "status", inv.to_wire())
        if failure is not None:
            raise failure
        return BackupStorageReply(inventory=inv)

    # ------------------------------------------------------------------ delete, query

    @handler(DeleteBackupStorage)
    async def delete_backup_storage(self, msg: DeleteBackupStorage, ctx: CallContext) -> EmptyReply:
        """Deleting a storage that is already gone succeeds, so a retried delete is safe. Image
        files stay where they are: the storage's directory is the admin's."""

        def remove(session: Session) -> dict[str, list[str]] | None:
            bs = session.get(BackupStorage, msg.uuid)
            if bs is None:
                return None
            cascaded = self.cascade.delete(session, KIND, msg.uuid, msg.delete_mode)
            session.delete(bs)
            return cascaded

        cascaded = await self.db.run(remove)
        if cascaded is not None:
            await announce_deleted(self.events, cascaded, KIND, msg.uuid)
        return EmptyReply()

    @handler(QueryBackupStorage, serial=False)
    async def query_backup_storage(self, msg: QueryBackupStorage, ctx: CallContext) -> QueryReply:
        return await self.db.run(run_query, QUERY, msg, ctx.account)
