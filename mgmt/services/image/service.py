"""Images: add (a real import), update, state, delete/recover/expunge, query.

``AddImage`` runs the import inside its own request, which the management cluster keeps as a
durable job: the image is committed as ``Downloading`` first (visible to queries, announced by an
``image.<uuid>.created`` event), then the source is streamed onto every backup storage in a worker
thread (``transfer.run_import``), and the request answers with the image ``Ready`` (bytes reserved
on each storage) or fails with the import's error code, the image left in ``Error`` with that
reason; either ending is announced by ``image.<uuid>.status``. Why in the request rather than in a
background task: the job makes it survive a node's death (the next owner of the image runs the
request again, and the import restarts from scratch: files are written under temporary names),
its writes are fenced like every job's, and ``CancelJob`` stops it. A client whose deadline passes
before a long import ends simply stops waiting; the import goes on, ``QueryImage`` shows it.

Normal accounts may add images (they own them) but not from ``file://``: that reads the
management node's own files.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from bus.errors import RingstackError, Sys, not_found
from mgmt.core.access import forget_sharing, load_owned
from mgmt.core.capacity import release_backup_storage, reserve_backup_storage
from mgmt.core.cascade import CascadeRegistry
from mgmt.core.db import Database, create_guard
from mgmt.core.events import EventPublisher
from mgmt.core.query import QueryTarget, Relation, run_query
from mgmt.core.service import Account, CallContext, Service, handler
from mgmt.services.image.errors import ImageError
from mgmt.services.image.rules import IMAGE_RULES
from mgmt.services.image.source import ImportFailure
from mgmt.services.image.transfer import Cancel, ImportJob, ImportResult, Target, remove_copies, run_import
from mgmt.services.storage.backends import backend_spec, image_path
from schema.api.base import EmptyReply, QueryReply
from schema.api.image import (
    AddImage,
    ChangeImageState,
    DeleteImage,
    ExpungeImage,
    ImageInventory,
    ImageReply,
    QueryImage,
    RecoverImage,
    UpdateImage,
)
from schema.db.image import Image, ImageBackupStorageRef
from schema.db.storage import BackupStorage
from schema.db.vm import VmInstance

log = logging.getLogger(__name__)

KIND = "image"
REF = ImageBackupStorageRef
QUERY = QueryTarget.for_model(
    Image,
    ImageInventory,
    name="image",
    relations={
        "backupStorage": Relation(
            "backupStorage",
            Image.uuid,
            BackupStorage.uuid,
            through=(ImageBackupStorageRef.image_uuid, ImageBackupStorageRef.backup_storage_uuid),
        ),
        "vmInstance": Relation("vmInstance", Image.uuid, VmInstance.image_uuid),
    },
)
INTERRUPTED = f"{ImageError.DOWNLOAD_INTERRUPTED}: the import was cancelled or its node stopped"


def _inventory(image: Image) -> ImageInventory:
    return ImageInventory.model_validate(image, from_attributes=True)


def _refs(session: Session, image_uuid: str) -> list[ImageBackupStorageRef]:
    return list(session.scalars(select(REF).where(REF.image_uuid == image_uuid)))


def _targets(session: Session, refs: list[ImageBackupStorageRef]) -> list[Target]:
    targets = []
    for ref in refs:
        bs = session.get(BackupStorage, ref.backup_storage_uuid)
        if bs is not None:
            targets.append(Target(ref.backup_storage_uuid, backend_spec(session, bs), ref.install_path))
    return targets


def _usable_backup_storage(session: Session, uuid: str) -> BackupStorage:
    # Not limited to what the account can see: backup storage is the admin's, and normal
    # accounts add their images to it.
    bs = session.get(BackupStorage, uuid)
    if bs is None:
        raise not_found("backupStorage", uuid)
    if bs.state != "Enabled" or bs.status != "Connected":
        raise RingstackError(
            ImageError.BACKUP_STORAGE_NOT_AVAILABLE,
            f"backup storage {uuid} is {bs.state} and {bs.status}; images need it Enabled and Connected",
            details={"uuid": uuid, "state": bs.state, "status": bs.status},
        )
    return bs


def _invalid_status(image: Image, wanted: str) -> RingstackError:
    return RingstackError(
        ImageError.INVALID_STATUS,
        f"image {image.uuid} is {image.status}; this needs it {wanted}",
        details={"uuid": image.uuid, "status": image.status},
    )


def _check_scheme(url: str, account: Account) -> None:
    if url.lower().startswith("file:") and not account.is_admin:
        raise RingstackError(
            ImageError.URL_NOT_ALLOWED,
            "file:// URLs read the management node's files and are for admin accounts only",
            details={"url": url},
        )


def _outcome(inv: ImageInventory) -> ImageReply:
    """The reply of an AddImage whose import is over: the image, or the error that ended it."""
    if inv.status != "Error":
        return ImageReply(inventory=inv)
    reason = inv.status_reason or f"{ImageError.STORE_FAILED}: unknown"
    code, _, message = reason.partition(": ")
    raise RingstackError(
        code,
        f"image {inv.uuid} could not be imported: {message}",
        details={"uuid": inv.uuid, "statusReason": reason},
    )


class ImageService(Service):
    name = "image"

    db: Database
    events: EventPublisher
    cascade: CascadeRegistry

    # The largest image accepted; each backup storage's free capacity bounds it further.
    max_image_size: ClassVar[int] = 1 << 40
    import_threads: ClassVar[int] = 2

    def __init__(self, **deps: Any) -> None:
        super().__init__(**deps)
        self._pool = ThreadPoolExecutor(max_workers=self.import_threads, thread_name_prefix="image-import")

    async def start(self) -> None:
        for rule in IMAGE_RULES:
            self.cascade.register(rule)

    async def stop(self) -> None:
        # Running imports were cancelled by the node's drain; their threads stop at the next chunk.
        self._pool.shutdown(wait=False, cancel_futures=True)
        for rule in IMAGE_RULES:
            self.cascade.unregister(rule.kind)

    # ------------------------------------------------------------------ add and import

    @handler(AddImage, cancellable=True)
    async def add_image(self, msg: AddImage, ctx: CallContext) -> ImageReply:
        _check_scheme(msg.url, ctx.account)
        uuid = ctx.new_resource_uuid(msg)

        def begin(session: Session) -> tuple[ImageInventory, ImportJob | None, str | None]:
            existing = create_guard(session, Image, uuid, ctx)
            if existing is not None:
                # A re-run after the node running it died or stopped: start that import again.
                interrupted = existing.status == "Error" and existing.status_reason == INTERRUPTED
                if existing.status != "Downloading" and not interrupted:
                    return _inventory(existing), None, None
                session.execute(delete(REF).where(REF.image_uuid == uuid))
                image, action = existing, "status"
                image.status, image.status_reason = "Downloading", None
            else:
                image, action = self._new_image(uuid, msg, ctx), "created"
                session.add(image)
            session.flush()
            for bs_uuid in msg.backup_storage_uuids:
                path = image_path(_usable_backup_storage(session, bs_uuid).url, uuid, msg.format)
                session.add(
                    REF(image_uuid=uuid, backup_storage_uuid=bs_uuid, install_path=path, status="Downloading")
                )
            session.flush()
            session.refresh(image, ["bs_refs"])
            return _inventory(image), self._job(session, image, msg), action

        inv, job, action = await self.db.run(begin)
        if action is not None:
            await self.events.resource_event(KIND, uuid, action, inv.to_wire())
        if job is not None:
            inv = await self._import(job)
        return _outcome(inv)

    @staticmethod
    def _new_image(uuid: str, msg: AddImage, ctx: CallContext) -> Image:
        return Image(
            uuid=uuid,
            name=msg.name,
            description=msg.description,
            url=msg.url,
            format=msg.format,
            media_type=msg.media_type,
            platform=msg.platform,
            guest_os_type=msg.guest_os_type,
            system=msg.system,
            state="Enabled",
            status="Downloading",
            size=0,
            actual_size=0,
            owner_account_uuid=ctx.account.uuid,
        )

    def _job(self, session: Session, image: Image, msg: AddImage) -> ImportJob:
        refs = _refs(session, image.uuid)
        limit = self.max_image_size
        for ref in refs:
            bs = session.get(BackupStorage, ref.backup_storage_uuid)
            limit = min(limit, bs.available_capacity if bs is not None else 0)
        return ImportJob(
            image_uuid=image.uuid,
            url=image.url,
            format=image.format,
            targets=tuple(_targets(session, refs)),
            limit=limit,
            md5sum=msg.md5sum,
            sha256=msg.sha256,
        )

    async def _import(self, job: ImportJob) -> ImageInventory:
        """Copy, then record the outcome; returns the image as it ends (Ready or Error)."""
        cancel = Cancel()
        copying = asyncio.get_running_loop().run_in_executor(self._pool, run_import, job, cancel)
        try:
            result = await asyncio.shield(copying)
        except asyncio.CancelledError:
            # CancelJob, or this node is stopping: stop the copy, let it remove its partial files,
            # and say so on the image (if this node still may). A re-run of the request restarts it.
            cancel.cancel("the import was cancelled")
            with contextlib.suppress(Exception):
                await copying
            try:
                await self._mark_error(job.image_uuid, INTERRUPTED)
            except Exception as exc:  # fenced out or closing: the next owner re-runs the request
                log.info("image %s: interrupted import not recorded here: %s", job.image_uuid, exc)
            raise
        except ImportFailure as exc:
            return await self._mark_error(job.image_uuid, exc.reason)
        return await self._finish(job, result)

    async def _finish(self, job: ImportJob, result: ImportResult) -> ImageInventory:
        """Record a completed import: reserve the bytes on each storage and mark the image Ready."""

        def commit(session: Session) -> ImageInventory:
            image = session.get(Image, job.image_uuid, with_for_update=True)
            if image is None:
                raise not_found(KIND, job.image_uuid)
            for ref in _refs(session, image.uuid):
                reserve_backup_storage(session, ref.backup_storage_uuid, result.actual_size)
                ref.status = "Ready"
                ref.size = result.actual_size
            image.status = "Ready"
            image.status_reason = None
            image.size = result.size
            image.actual_size = result.actual_size
            image.md5sum = result.md5sum
            image.sha256 = result.sha256
            session.flush()
            session.refresh(image, ["bs_refs"])
            return _inventory(image)

        try:
            inv = await self.db.run(commit)
        except RingstackError as exc:
            await self._discard(job.targets)
            if exc.code in (Sys.NOT_OWNER, Sys.NOT_FOUND):
                raise  # another node runs this request now, or the image went with its storage
            # e.g. the storage filled up with other images during this copy
            code = ImageError.TOO_LARGE if exc.code.startswith("CAPACITY.") else ImageError.STORE_FAILED
            return await self._mark_error(job.image_uuid, f"{code}: {exc.message}")
        await self.events.resource_event(KIND, inv.uuid, "status", inv.to_wire())
        return inv

    async def _mark_error(self, image_uuid: str, reason: str) -> ImageInventory:
        def mark(session: Session) -> ImageInventory:
            image = session.get(Image, image_uuid, with_for_update=True)
            if image is None:
                raise not_found(KIND, image_uuid)
            image.status = "Error"
            image.status_reason = reason
            session.execute(delete(REF).where(REF.image_uuid == image_uuid))
            session.flush()
            session.refresh(image, ["bs_refs"])
            return _inventory(image)

        inv = await self.db.run(mark)
        await self.events.resource_event(KIND, inv.uuid, "status", inv.to_wire())
        return inv

    async def _discard(self, targets: tuple[Target, ...]) -> None:
        loop = asyncio.get_running_loop()
        for error in await loop.run_in_executor(self._pool, remove_copies, list(targets)):
            log.warning("a copy of a failed import could not be removed: %s", error)

    # ------------------------------------------------------------------ update and state

    @handler(UpdateImage)
    async def update_image(self, msg: UpdateImage, ctx: CallContext) -> ImageReply:
        def update(session: Session) -> ImageInventory:
            image = load_owned(session, Image, msg.uuid, ctx.account, KIND)
            for field in ("name", "description", "platform", "guest_os_type", "system"):
                value = getattr(msg, field)
                if value is not None:
                    setattr(image, field, value)
            session.flush()
            return _inventory(image)

        inv = await self.db.run(update)
        await self.events.resource_event(KIND, inv.uuid, "updated", inv.to_wire())
        return ImageReply(inventory=inv)

    @handler(ChangeImageState)
    async def change_image_state(self, msg: ChangeImageState, ctx: CallContext) -> ImageReply:
        new_state = "Enabled" if msg.state_event == "enable" else "Disabled"

        def change(session: Session) -> tuple[ImageInventory, bool]:
            image = load_owned(session, Image, msg.uuid, ctx.account, KIND)
            changed = image.state != new_state
            image.state = new_state
            session.flush()
            return _inventory(image), changed

        inv, changed = await self.db.run(change)
        if changed:
            await self.events.resource_event(KIND, inv.uuid, "state", inv.to_wire())
        return ImageReply(inventory=inv)

    # ------------------------------------------------------------------ delete, recover, expunge

    @handler(DeleteImage)
    async def delete_image(self, msg: DeleteImage, ctx: CallContext) -> EmptyReply:
        """Mark Deleted (copies kept for RecoverImage). Gone or already Deleted: success, so a
        retried delete is safe. (It queues behind a running AddImage of the same image; CancelJob
        stops an import.)"""

        def mark(session: Session) -> ImageInventory | None:
            if session.get(Image, msg.uuid) is None:
                return None
            image = load_owned(session, Image, msg.uuid, ctx.account, KIND)
            if image.status == "Deleted":
                return None
            image.status = "Deleted"
            session.flush()
            return _inventory(image)

        inv = await self.db.run(mark)
        if inv is not None:
            await self.events.resource_event(KIND, inv.uuid, "deleted", inv.to_wire())
        return EmptyReply()

    @handler(RecoverImage)
    async def recover_image(self, msg: RecoverImage, ctx: CallContext) -> ImageReply:
        """Undo DeleteImage: Ready when every copy is there, else Error (a failed import)."""

        def recover(session: Session) -> ImageInventory:
            image = load_owned(session, Image, msg.uuid, ctx.account, KIND)
            if image.status != "Deleted":
                raise _invalid_status(image, "Deleted")
            refs = _refs(session, image.uuid)
            complete = bool(refs) and all(ref.status == "Ready" for ref in refs)
            image.status = "Ready" if complete else "Error"
            if not complete and image.status_reason is None:
                image.status_reason = f"{ImageError.STORE_FAILED}: no complete copy"
            session.flush()
            return _inventory(image)

        inv = await self.db.run(recover)
        await self.events.resource_event(KIND, inv.uuid, "recovered", inv.to_wire())
        return ImageReply(inventory=inv)

    @handler(ExpungeImage)
    async def expunge_image(self, msg: ExpungeImage, ctx: CallContext) -> EmptyReply:
        """Remove the copies, then the record and the capacity it held. Removing files first
        means a failure (storage unreachable) changes nothing and can be retried."""

        def targets(session: Session) -> list[Target] | None:
            if session.get(Image, msg.uuid) is None:
                return None
            image = load_owned(session, Image, msg.uuid, ctx.account, KIND)
            if image.status != "Deleted":
                raise _invalid_status(image, "Deleted (DeleteImage first)")
            return _targets(session, _refs(session, image.uuid))

        found = await self.db.run(targets)
        if found is None:
            return EmptyReply()
        loop = asyncio.get_running_loop()
        errors = await loop.run_in_executor(self._pool, remove_copies, found)
        if errors:
            raise RingstackError(
                ImageError.EXPUNGE_FAILED,
                f"image {msg.uuid} kept: {'; '.join(errors)}",
                details={"uuid": msg.uuid, "errors": errors},
            )

        def remove(session: Session) -> bool:
            image = session.get(Image, msg.uuid)
            if image is None:
                return False
            for ref in _refs(session, image.uuid):
                if ref.status == "Ready":
                    with contextlib.suppress(RingstackError):  # the storage itself may be gone
                        release_backup_storage(session, ref.backup_storage_uuid, ref.size)
            session.execute(delete(REF).where(REF.image_uuid == image.uuid))
            session.delete(image)
            forget_sharing(session, [image.uuid])
            return True

        if await self.db.run(remove):
            await self.events.resource_event(KIND, msg.uuid, "expunged")
        return EmptyReply()

    # ------------------------------------------------------------------ query

    @handler(QueryImage, serial=False)
    async def query_image(self, msg: QueryImage, ctx: CallContext) -> QueryReply:
        return await self.db.run(run_query, QUERY, msg, ctx.account)
