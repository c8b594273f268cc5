"""ShareResource / RevokeResourceSharing: rows of ``shared_resource`` that ``mgmt.core.access``
reads to widen a normal account's view. Shared resources are read/use-only for the receivers."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import delete, or_, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from bus.errors import not_found
from mgmt.core.access import load_owned
from mgmt.core.service import Account
from mgmt.services.identity.resources import find_resources, resource_kind
from schema.api.identity import RevokeResourceSharing, ShareResource
from schema.db.identity import Account as AccountRow
from schema.db.identity import SharedResource

UNIQUE = "uq_shared_resource_resource_uuid_receiver_account_uuid"


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


def _owned(session: Session, uuids: list[str], caller: Account, *, must_exist: bool) -> dict[str, _Owned]:
    """The resources ``caller`` may share or unshare (admins: any; others: their own). Not
    visible -> ``SYS.NOT_FOUND``; visible only because shared with the caller -> PERMISSION_DENIED."""
    models = find_resources(session, uuids)
    owned = {}
    for uuid in uuids:
        model = models.get(uuid)
        if model is None:
            if must_exist:
                raise not_found("resource", uuid)
            continue
        kind = resource_kind(model)
        row = load_owned(session, model, uuid, caller, kind)
        owned[uuid] = _Owned(kind, row.owner_account_uuid)
    return owned


def share(session: Session, msg: ShareResource, caller: Account) -> list[Change]:
    uuids = list(dict.fromkeys(msg.resource_uuids))
    owned = _owned(session, uuids, caller, must_exist=True)
    receivers = list(dict.fromkeys(msg.account_uuids or []))
    known = set(session.scalars(select(AccountRow.uuid).where(AccountRow.uuid.in_(receivers))))
    for receiver in receivers:
        if receiver not in known:
            raise not_found("account", receiver)
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
    session.execute(insert(SharedResource).values(rows).on_conflict_do_nothing(constraint=UNIQUE))
    return [Change(info.kind, uuid, receivers, msg.to_public) for uuid, info in owned.items()]


def revoke(session: Session, msg: RevokeResourceSharing, caller: Account) -> list[Change]:
    """Delete the matching sharing rows; revoking what is not shared is a no-op. A normal
    account revokes only its own resources' sharing, including that of resources already gone."""
    uuids = list(dict.fromkeys(msg.resource_uuids))
    _owned(session, uuids, caller, must_exist=False)
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
