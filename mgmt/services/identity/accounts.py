"""Account rows: the bootstrap admin, creation, update and deletion (transaction bodies)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from bus.envelope import new_uuid
from bus.errors import RingstackError, Sys
from mgmt.core.access import load_owned
from mgmt.core.cascade import CascadeRegistry
from mgmt.core.db import create_guard
from mgmt.core.service import Account, CallContext
from mgmt.services.identity.errors import CANNOT_DELETE_SELF, LAST_ADMIN
from mgmt.services.identity.resources import owned_resource_counts
from schema.api.identity import AccountInventory, CreateAccount, UpdateAccount
from schema.db.identity import Account as AccountRow
from schema.db.identity import AccountSession, Quota, SharedResource

ADMIN_NAME = "admin"


def inventory(row: AccountRow) -> AccountInventory:
    return AccountInventory.model_validate(row, from_attributes=True)


def admin_exists(session: Session) -> bool:
    return session.scalar(select(AccountRow.uuid).where(AccountRow.name == ADMIN_NAME)) is not None


def insert_admin(session: Session, password_hash: str) -> AccountInventory | None:
    """Create the bootstrap admin unless an account of that name exists. Several nodes starting
    at once may all try: the unique name makes exactly one insert win, the others do nothing."""
    uuid = new_uuid()
    row = session.execute(
        insert(AccountRow)
        .values(
            uuid=uuid,
            name=ADMIN_NAME,
            type="Admin",
            password_hash=password_hash,
            description="the bootstrap administrator",
            owner_account_uuid=uuid,
            version=1,
        )
        .on_conflict_do_nothing(index_elements=[AccountRow.name])
        .returning(AccountRow)
    ).scalar_one_or_none()
    return None if row is None else inventory(row)


def _name_taken(session: Session, name: str, other_than: str | None = None) -> None:
    stmt = select(AccountRow.uuid).where(AccountRow.name == name)
    if other_than is not None:
        stmt = stmt.where(AccountRow.uuid != other_than)
    if session.scalar(stmt) is not None:
        raise RingstackError(Sys.CONFLICT, f"an account named {name!r} exists", details={"name": name})


def create(
    session: Session, msg: CreateAccount, uuid: str, password_hash: str, ctx: CallContext
) -> AccountInventory:
    existing = create_guard(session, AccountRow, uuid, ctx)
    if existing is not None:
        return inventory(existing)
    _name_taken(session, msg.name)
    row = AccountRow(
        uuid=uuid,
        name=msg.name,
        type=msg.type,
        description=msg.description,
        password_hash=password_hash,
        owner_account_uuid=uuid,  # an account owns itself: that is what lets it see its own row
    )
    session.add(row)
    session.flush()
    return inventory(row)


def update(
    session: Session, msg: UpdateAccount, password_hash: str | None, caller: Account
) -> tuple[AccountInventory, list[str]]:
    """The updated account, and the sessions ended: when someone else (an admin) sets an
    account's password, every session of that account ends, so a reset locks out whoever held
    one. An account changing its own password keeps its sessions (it may end them with LogOut)."""
    # A normal account sees (and so may change) its own row only; others are "not found".
    row = load_owned(session, AccountRow, msg.uuid, caller, "account")
    if msg.name is not None and msg.name != row.name:
        _name_taken(session, msg.name, other_than=row.uuid)
        row.name = msg.name
    if msg.description is not None:
        row.description = msg.description
    ended: list[str] = []
    if password_hash is not None:
        row.password_hash = password_hash
        if caller.uuid != row.uuid:
            ended = list(
                session.scalars(
                    delete(AccountSession)
                    .where(AccountSession.account_uuid == row.uuid)
                    .returning(AccountSession.uuid)
                )
            )
    session.flush()
    return inventory(row), ended


@dataclass(frozen=True)
class Deleted:
    account: str
    cascaded: dict[str, list[str]]


def delete_account(
    session: Session, uuid: str, mode: str, caller: Account, cascade: CascadeRegistry
) -> Deleted | None:
    """Delete an account; None when it is already gone (a retried delete succeeds).

    Both modes refuse (``SYS.RESOURCE_IN_USE``) while the account still owns resources in any
    table: Permissive at once; Enforcing first deletes what the services that own those tables
    registered cascade rules for (parent kind ``account``), then refuses if anything is left, as
    rows without a rule cannot be deleted safely from here (their services must release agents,
    IPs, storage). Sessions, quota overrides and sharing records go with the account.
    """
    row = session.get(AccountRow, uuid, with_for_update=True)
    if row is None:
        return None
    if uuid == caller.uuid:
        raise RingstackError(CANNOT_DELETE_SELF, "an account cannot delete itself", details={"uuid": uuid})
    if row.type == "Admin":
        # Locking every admin row serialises two admins deleting each other: the second then
        # counts one admin left instead of both succeeding.
        admins = session.scalars(
            select(AccountRow.uuid).where(AccountRow.type == "Admin").with_for_update()
        ).all()
        if len(admins) <= 1:
            raise RingstackError(
                LAST_ADMIN, "the last admin account cannot be deleted", details={"uuid": uuid}
            )
    cascaded = cascade.delete(session, "account", uuid, mode)
    remaining = owned_resource_counts(session, uuid)
    if remaining:
        summary = ", ".join(f"{n} {table}" for table, n in sorted(remaining.items()))
        raise RingstackError(
            Sys.RESOURCE_IN_USE,
            f"account {uuid} still owns {summary}; delete or reassign them first",
            details={"resources": remaining},
        )
    # The foreign keys would cascade these too; explicit, so nothing depends on ON DELETE alone.
    session.execute(delete(AccountSession).where(AccountSession.account_uuid == uuid))
    session.execute(delete(Quota).where(Quota.identity_uuid == uuid))
    session.execute(
        delete(SharedResource).where(
            (SharedResource.owner_account_uuid == uuid) | (SharedResource.receiver_account_uuid == uuid)
        )
    )
    session.delete(row)
    return Deleted(uuid, cascaded)
