"""Login sessions in the database, and the local-account password verifier."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from datetime import timedelta
from typing import TypeVar

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.orm import Session

from mgmt.core.db import Database
from mgmt.core.service import Account
from mgmt.services.identity import passwords
from schema.api.identity import SessionInventory
from schema.db.identity import Account as AccountRow
from schema.db.identity import AccountSession

T = TypeVar("T")


def new_session_uuid() -> str:
    # The session uuid is a bearer credential: 128 bits from the OS's CSPRNG.
    return secrets.token_hex(16)


def create_session(session: Session, account_uuid: str, timeout: float) -> SessionInventory:
    """A new session for the account; its expired sessions are swept on the way (indexed)."""
    session.execute(
        delete(AccountSession).where(
            AccountSession.account_uuid == account_uuid, AccountSession.expired_date <= func.now()
        )
    )
    uuid = new_session_uuid()
    # The database's clock decides expiry, as it does when sessions are checked.
    created, expired = session.execute(
        insert(AccountSession)
        .values(uuid=uuid, account_uuid=account_uuid, expired_date=func.now() + timedelta(seconds=timeout))
        .returning(AccountSession.created_at, AccountSession.expired_date)
    ).one()
    return SessionInventory(uuid=uuid, account_uuid=account_uuid, created_at=created, expired_date=expired)


def delete_session(session: Session, uuid: str) -> bool:
    deleted = session.execute(
        delete(AccountSession).where(AccountSession.uuid == uuid).returning(AccountSession.uuid)
    )
    return deleted.first() is not None


def _credentials(session: Session, name: str) -> tuple[Account, str] | None:
    row = session.execute(
        select(AccountRow.uuid, AccountRow.name, AccountRow.type, AccountRow.password_hash).where(
            AccountRow.name == name
        )
    ).first()
    if row is None:
        return None
    return Account(uuid=row.uuid, name=row.name, is_admin=row.type == "Admin"), row.password_hash


def _store_rehash(session: Session, uuid: str, old: str, new: str) -> None:
    # Only if unchanged meanwhile: a concurrent password change must win over a re-hash.
    session.execute(
        update(AccountRow)
        .where(AccountRow.uuid == uuid, AccountRow.password_hash == old)
        .values(password_hash=new, version=AccountRow.version + 1)
    )


class LocalPasswordVerifier:
    """Accounts whose scrypt hash is in the ``account`` table."""

    name = "local"

    def __init__(self, db: Database, *, concurrency: int = 4) -> None:
        self.db = db
        # scrypt takes 16 MiB and tens of ms of CPU per call: bound how many run at once, so a
        # burst of logins queues instead of starving the node (they run off the event loop).
        self._slots = asyncio.Semaphore(concurrency)

    async def _run_kdf(self, fn: Callable[..., T], *args: str) -> T:
        async with self._slots:
            return await asyncio.to_thread(fn, *args)

    async def verify(self, account_name: str, password: str) -> Account | None:
        found = await self.db.run(_credentials, account_name)
        if found is None:
            await self._run_kdf(passwords.burn_verification_time, password)
            return None
        account, stored = found
        if not await self._run_kdf(passwords.verify_password, password, stored):
            return None
        if passwords.needs_rehash(stored):
            new = await self._run_kdf(passwords.hash_password, password)
            await self.db.run(_store_rehash, account.uuid, stored, new)
        return account

    async def hash(self, password: str) -> str:
        return await self._run_kdf(passwords.hash_password, password)
