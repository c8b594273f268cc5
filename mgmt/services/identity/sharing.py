"""ShareResource / RevokeResourceSharing: rows of ``shared_resource`` that ``mgmt.core.access``
reads to widen a normal account's view. Shared resources are read/use-only for the receivers."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import delete, or_, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from mgmt.core.access import gone_or_hidden, load_owned
from mgmt.core.service import Account
from mgmt.services.identity.resources import find_resources, resource_kind
from schema.api.identity import RevokeResourceSharing, ShareResource
from schema.db.identity import Account as AccountRow
from schema.db.identity import SharedResource

UNIQUE = "uq_shared_resource_resource_uuid_receiver_account_uuid"
RESOURCE = "resource"  # what every refusal names: never the kind a uuid turned out to be


@dataclass(frozen=True)
class Change:
    """What changed for one resource, for its ``<kind>.<uuid>.shared|revoked`` event."""

    kind: str
    uuid: str
    account_uuids: list[str]
    to_public: bool


@dataclass(frozen=True)
class _Owned:
    kind: str
    owner: str | None


def _owned(session: Session, uuids: list[str], caller: Account, *, gone_ok: bool) -> dict[str, _Owned]:
    """The resources ``caller`` may share or unshare (admins: any; others: their own). Not
    visible, whether it exists or not -> the same ``SYS.NOT_FOUND`` naming a "resource" (never the
    kind the uuid turned out to be); visible only because shared with the caller ->
    PERMISSION_DENIED. ``gone_ok``: a resource that no longer exists but whose sharing records
    are the caller's is accepted (revoking what a deleted resource left)."""
    models = find_resources(session, uuids)
    owned = {}
    for uuid in uuids:
        model = models.get(uuid)
        if model is None:
            if gone_ok and _left_sharing(session, uuid, caller):
                continue
            raise gone_or_hidden(RESOURCE, uuid)
        row = load_owned(session, model, uuid, caller, RESOURCE)
        owned[uuid] = _Owned(resource_kind(model), row.owner_account_uuid)
    return owned


def _left_sharing(session: Session, uuid: str, caller: Account) -> bool:
    stmt = select(SharedResource.id).where(SharedResource.resource_uuid == uuid).limit(1)
    if not caller.is_admin:
        stmt = stmt.where(SharedResource.owner_account_uuid == caller.uuid)
    return session.scalar(stmt) is not None


def share(session: Session, msg: ShareResource, caller: Account) -> list[Change]:
    uuids = list(dict.fromkeys(msg.resource_uuids))
    owned = _owned(session, uuids, caller, gone_ok=False)
    # An account uuid that names no account is skipped, not refused: refusing it would tell a
    # normal account which account uuids exist (accounts are invisible to one another).
    wanted = list(dict.fromkeys(msg.account_uuids or []))
    known = set(session.scalars(select(AccountRow.uuid).where(AccountRow.uuid.in_(wanted))))
    receivers = [r for r in wanted if r in known]
    targets: list[tuple[str | None, bool]] = [(r, False) for r in receivers]
    if msg.to_public:
        targets.append((None, True))
    rows = [
        {
            "resource_uuid": uuid,
            "resource_type": info.kind,
            # A resource without an owner (made by the system) is recorded as the caller's share.
            "owner_account_uuid": info.owner or caller.uuid,
            "receiver_account_uuid": receiver,
            "to_public": public,
        }
        for uuid, info in owned.items()
        for receiver, public in targets
    ]
    # Sharing twice is a no-op, so a retried request succeeds.
    if rows:
        session.execute(insert(SharedResource).values(rows).on_conflict_do_nothing(constraint=UNIQUE))
    return [Change(info.kind, uuid, receivers, msg.to_public) for uuid, info in owned.items()]


def revoke(session: Session, msg: RevokeResourceSharing, caller: Account) -> list[Change]:
    """Delete the matching sharing rows; revoking what is not shared is a no-op. A normal
    account revokes only its own resources' sharing, including that of resources already gone;
    anything else it names is not found (see ``_owned``)."""
    uuids = list(dict.fromkeys(msg.resource_uuids))
    _owned(session, uuids, caller, gone_ok=True)
    stmt = delete(SharedResource).where(SharedResource.resource_uuid.in_(uuids))
    if not caller.is_admin:
        stmt = stmt.where(SharedResource.owner_account_uuid == caller.uuid)
    if not msg.all:
        which = []
        if msg.account_uuids:
            which.append(SharedResource.receiver_account_uuid.in_(msg.account_uuids))
        if msg.to_public:
            which.append(SharedResource.to_public.is_(True))
        stmt = stmt.where(or_(*which))
    deleted = session.execute(
        stmt.returning(
            SharedResource.resource_uuid,
            SharedResource.resource_type,
            SharedResource.receiver_account_uuid,
            SharedResource.to_public,
        )
    ).all()
    changes: dict[str, Change] = {}
    for uuid, kind, receiver, public in deleted:
        change = changes.setdefault(uuid, Change(kind, uuid, [], False))
        if receiver is not None:
            change.account_uuids.append(receiver)
        if public:
            changes[uuid] = Change(kind, uuid, change.account_uuids, True)
    return list(changes.values())
