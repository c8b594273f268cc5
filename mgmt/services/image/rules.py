"""Cascade rules: what deleting a backup storage does to images.

An image whose only copies are on the storages being deleted is a child that vetoes a Permissive
delete (it would be lost) and is deleted in Enforcing mode. Copies of images that also live
elsewhere are only references: they go in both modes, and the image stays.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import and_, delete, exists, select, tuple_
from sqlalchemy.orm import Session, aliased

from mgmt.core.access import forget_sharing
from mgmt.core.cascade import CascadeRule
from mgmt.services.storage.links import pair_ids, split_pairs
from schema.db.image import Image, ImageBackupStorageRef

REF = ImageBackupStorageRef


def _orphaned_images(session: Session, parent_kind: str, bs_uuids: Sequence[str]) -> list[str]:
    other = aliased(ImageBackupStorageRef)
    elsewhere = exists().where(
        and_(other.image_uuid == REF.image_uuid, other.backup_storage_uuid.not_in(bs_uuids))
    )
    stmt = select(REF.image_uuid).where(REF.backup_storage_uuid.in_(bs_uuids), ~elsewhere).distinct()
    return list(session.scalars(stmt))


def _delete_images(session: Session, uuids: Sequence[str]) -> None:
    session.execute(delete(REF).where(REF.image_uuid.in_(uuids)))
    session.execute(delete(Image).where(Image.uuid.in_(uuids)))
    forget_sharing(session, uuids)


def _refs_on(session: Session, parent_kind: str, bs_uuids: Sequence[str]) -> list[str]:
    rows = session.execute(
        select(REF.image_uuid, REF.backup_storage_uuid).where(REF.backup_storage_uuid.in_(bs_uuids))
    )
    return pair_ids((image, bs) for image, bs in rows)


def _delete_refs(session: Session, ids: Sequence[str]) -> None:
    session.execute(delete(REF).where(tuple_(REF.image_uuid, REF.backup_storage_uuid).in_(split_pairs(ids))))


IMAGE_RULES = (
    CascadeRule("image", ("backupStorage",), _orphaned_images, _delete_images),
    CascadeRule(
        "imageBackupStorageRef", ("backupStorage",), _refs_on, _delete_refs, vetoes=(), resource=False
    ),
)
