"""Authentication as strategies, so identity backends plug in without core changes.

Two seams:

- ``AuthStrategy``: turns the session an API envelope carries into the calling ``Account``; the
  gateway (``ManagementNode._on_api``) calls it for every non-public API. The identity service
  installs ``AccountSessionAuth`` (sessions in PostgreSQL, cached briefly in memory) on the node
  when it starts. ``NoAuth``, which refuses everyone, is what a bare node has before that.
- ``PasswordVerifier``: checks the credentials of ``LogInByAccount``. Local accounts (scrypt
  hashes) are one verifier; an LDAP directory would be another, added to the identity service's
  chain (``IdentityService.add_password_verifier`` or the ``ringstack.password_verifiers`` entry
  point group) without touching this module or the gateway.
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from bus.errors import RingstackError, Sys
from mgmt.core.db import Database
from mgmt.core.service import Account

SESSION_PATTERN = re.compile(r"^[0-9a-f]{32}$")
PASSWORD_VERIFIER_ENTRY_POINTS = "ringstack.password_verifiers"


class AuthStrategy(Protocol):
    async def authenticate(self, session: str | None, message_name: str) -> Account:
        """The account behind ``session``, or raise ``SYS.AUTH_REQUIRED``."""
        ...


class AuthSlot:
    """The node's authentication strategy: all an identity backend needs of the node is to install
    its strategy here when it starts (``install_default``), and to reach it to drop a cached
    session. The gateway authenticates through it."""

    def __init__(self, strategy: AuthStrategy | None = None) -> None:
        self.strategy: AuthStrategy = strategy or NoAuth()

    def install_default(self, strategy: AuthStrategy) -> None:
        """Use ``strategy`` unless the node was given one of its own (which is kept)."""
        if isinstance(self.strategy, NoAuth):
            self.strategy = strategy

    async def authenticate(self, session: str | None, message_name: str) -> Account:
        return await self.strategy.authenticate(session, message_name)


class PasswordVerifier(Protocol):
    """One way of checking a login's credentials (local accounts, LDAP, ...)."""

    name: str

    async def verify(self, account_name: str, password: str) -> Account | None:
        """The account the credentials prove, or None when they prove nothing (unknown name, wrong
        password, a directory that does not know the user). Bad credentials never raise; only an
        unusable backend does (as a ``RingstackError``)."""
        ...


class NoAuth:
    """What a node has until an identity backend installs itself: it lets nobody in, so a node
    without an identity service (disabled, or failed to load) is closed rather than open."""

    async def authenticate(self, session: str | None, message_name: str) -> Account:
        raise RingstackError(Sys.AUTH_REQUIRED, "no authentication backend is running on this node")


def auth_required(message: str) -> RingstackError:
    return RingstackError(Sys.AUTH_REQUIRED, message)


@dataclass(frozen=True, slots=True)
class _Cached:
    account: Account
    expires_at: float  # the session's own expiry, wall clock (time.time)
    fresh_until: float  # when to ask the database again, monotonic
    epoch: int  # the invalidation feed's epoch when cached (see ``feed_epoch``)


def _lookup(session: Session, session_uuid: str) -> tuple[Account, float] | None:
    # Imported here: the identity tables are the identity service's, and core must import without them.
    from schema.db.identity import Account as AccountRow
    from schema.db.identity import AccountSession

    row = session.execute(
        select(AccountRow.uuid, AccountRow.name, AccountRow.type, AccountSession.expired_date)
        .join(AccountRow, AccountRow.uuid == AccountSession.account_uuid)
        .where(AccountSession.uuid == session_uuid, AccountSession.expired_date > func.now())
    ).first()
    if row is None:
        return None
    uuid, name, account_type, expired = row
    return Account(uuid=uuid, name=name, is_admin=account_type == "Admin"), expired.timestamp()


class AccountSessionAuth:
    """Sessions stored in the database, each validated one cached for ``cache_ttl`` seconds.

    Every API call authenticates, so a hit must not touch the database. Staleness is bounded:
    an entry is never used past its session's expiry, nor longer than ``cache_ttl`` after it was
    read; ``LogOut`` and account deletion also invalidate it at once on every node (the identity
    service listens for those events). An invalidation racing with a lookup in flight wins: the
    lookup's result is then not cached. ``feed_epoch`` (e.g. the bus's connection count) says
    when the invalidation feed may have had a gap: entries cached before it changed are dropped.
    """

    def __init__(
        self,
        db: Database,
        *,
        cache_ttl: float = 5.0,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        feed_epoch: Callable[[], int] = lambda: 0,
    ) -> None:
        self.db = db
        self.cache_ttl = cache_ttl
        self.max_entries = max_entries
        self._clock = clock
        self._wall_clock = wall_clock
        self._feed_epoch = feed_epoch
        self._cache: OrderedDict[str, _Cached] = OrderedDict()
        # Bumped by every invalidation. No lock: the cache is only touched on the event loop.
        self._generation = 0

    async def authenticate(self, session: str | None, message_name: str) -> Account:
        if not session:
            raise auth_required(f"{message_name} needs a session; log in with LogInByAccount")
        account = await self.lookup(session)
        if account is None:
            raise auth_required("the session is unknown or expired; log in again with LogInByAccount")
        return account

    async def lookup(self, session: str) -> Account | None:
        """The account of a valid session, None for a malformed, unknown or expired one."""
        if not SESSION_PATTERN.match(session):
            return None
        cached = self._cache.get(session)
        if cached is not None:
            if (
                self._clock() < cached.fresh_until
                and self._wall_clock() < cached.expires_at
                and cached.epoch == self._feed_epoch()
            ):
                return cached.account
            self._cache.pop(session, None)
        generation, epoch = self._generation, self._feed_epoch()
        found = await self.db.run(_lookup, session)
        if found is None:
            return None
        account, expires_at = found
        if generation == self._generation:
            self._store(session, _Cached(account, expires_at, self._clock() + self.cache_ttl, epoch))
        return account

    def _store(self, session: str, entry: _Cached) -> None:
        self._cache[session] = entry
        self._cache.move_to_end(session)
        while len(self._cache) > self.max_entries:  # oldest first: a bounded cache, not an LRU
            self._cache.popitem(last=False)

    def invalidate_session(self, session: str) -> None:
        self._generation += 1
        self._cache.pop(session, None)

    def invalidate_account(self, account_uuid: str) -> None:
        self._generation += 1
        for key in [k for k, v in self._cache.items() if v.account.uuid == account_uuid]:
            del self._cache[key]

    def clear(self) -> None:
        self._generation += 1
        self._cache.clear()
