"""Which account owns a resource, for routing its events to that account's API clients.

Events name a kind and a uuid (``mgmt.core.events``); API clients may read only their own
account's events (``<ns>.account-events``, keyed by the owner's account uuid). The owner of a kind's
row is its ``owner_account_uuid`` column (every ``ResourceMixin`` model, jobs), a session's
``account_uuid``. Owners are remembered as the ORM writes them (every flush) in a bounded cache, so
an event right after a change, and the ``deleted`` event after its row is gone, need no query;
anything else is looked up once. An owner never changes in place (no API moves a resource between
accounts), so a cached owner stays true.
"""

from __future__ import annotations

from collections import OrderedDict
from threading import Lock
from typing import Any

from sqlalchemy import event, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from mgmt.core.db import Database
from schema.db.base import Base

CACHE_SIZE = 100_000

_lock = Lock()
# Keyed by (kind, uuid), never by uuid alone: a uuid taken by rows of two kinds (another account's
# offering made with the uuid of my VM) must not route my VM's events to that account.
_cache: OrderedDict[tuple[str, str], str] = OrderedDict()
_KINDS = {"Job": "job", "AccountSession": "session"}  # kinds of tables without ``resource_type``


def _remember(kind: str, uuid: str, owner: str) -> None:
    with _lock:
        _cache[(kind, uuid)] = owner
        _cache.move_to_end((kind, uuid))
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)


def _cached(kind: str, uuid: str) -> str | None:
    with _lock:
        return _cache.get((kind, uuid))


def _kind_and_column(cls: type[Any]) -> tuple[str, str] | None:
    """The event kind of a model's rows and the column naming their owner, if it has both."""
    kind = getattr(cls, "resource_type", None) or _KINDS.get(cls.__name__)
    if not isinstance(kind, str):
        return None
    if hasattr(cls, "owner_account_uuid"):
        return kind, "owner_account_uuid"
    if cls.__name__ == "AccountSession":
        return kind, "account_uuid"
    return None


@event.listens_for(Session, "after_flush")
def _capture(session: Session, _context: Any) -> None:
    for obj in (*session.new, *session.dirty, *session.deleted):
        found = _kind_and_column(type(obj))
        if found is None:
            continue
        kind, column = found
        owner, uuid = getattr(obj, column, None), getattr(obj, "uuid", None)
        if isinstance(owner, str) and isinstance(uuid, str):
            _remember(kind, uuid, owner)


def _owner_columns() -> dict[str, InstrumentedAttribute[Any]]:
    """Event kind -> the column holding the owner of that kind's rows."""
    columns: dict[str, InstrumentedAttribute[Any]] = {}
    for mapper in Base.registry.mappers:
        found = _kind_and_column(mapper.class_)
        if found is not None:
            columns.setdefault(found[0], getattr(mapper.class_, found[1]))
    return columns


class OwnerIndex:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._columns: dict[str, InstrumentedAttribute[Any]] | None = None

    async def owner_of(self, kind: str, uuid: str) -> str | None:
        found = _cached(kind, uuid)
        if found is not None:
            return found
        if self._columns is None:
            self._columns = _owner_columns()
        column = self._columns.get(kind)
        if column is None:
            return None
        model = column.class_

        def look(session: Session) -> str | None:
            return session.scalar(select(column).where(model.uuid == uuid))

        owner = await self.db.run_unfenced(look)
        if owner is not None:
            _remember(kind, uuid, owner)
        return owner
