"""Resources of any kind, found generically through the SQLAlchemy metadata: what an account owns
(DeleteAccount) and which table a uuid lives in (ShareResource)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

import schema.db  # noqa: F401  (imports every model module, so the metadata knows every table)
from mgmt.core.access import kind_of
from schema.db.base import Base

# Identity's own tables: an account owns its own row and its sharing records, which are not
# "resources" it must give up before it can be deleted, nor things to share.
IDENTITY_TABLES = frozenset({"account", "account_session", "quota", "shared_resource", "resource"})
# Tables whose owner_account_uuid records who *asked* for something (history), not who owns a
# resource: they neither block an account's deletion nor are shareable. ``job`` is the cluster's
# request log. A service adds its own with ``register_record_table``.
_RECORD_TABLES: set[str] = {"job"}


def register_record_table(name: str) -> None:
    _RECORD_TABLES.add(name)


def _skipped(name: str | None) -> bool:
    return name is None or name in IDENTITY_TABLES or name in _RECORD_TABLES


def owned_resource_counts(session: Session, account_uuid: str) -> dict[str, int]:
    """Table name -> how many of its rows ``account_uuid`` owns, for every table that has an
    ``owner_account_uuid`` column (tables with none owned are left out)."""
    counts: dict[str, int] = {}
    for table in Base.metadata.sorted_tables:
        if _skipped(table.name) or "owner_account_uuid" not in table.c:
            continue
        count = session.scalar(
            select(func.count()).select_from(table).where(table.c.owner_account_uuid == account_uuid)
        )
        if count:
            counts[str(table.name)] = int(count)  # plain str: table names are str subclasses
    return counts


def resource_models() -> list[type[Any]]:
    """Every mapped resource class (a ``uuid`` and an ``owner_account_uuid``), identity's excluded."""
    models = []
    for mapper in Base.registry.mappers:
        table = mapper.local_table
        columns = getattr(table, "c", None)
        if _skipped(getattr(table, "name", None)) or columns is None:
            continue
        if "uuid" in columns and "owner_account_uuid" in columns:
            models.append(mapper.class_)
    return sorted(models, key=lambda m: m.__tablename__)


def resource_kind(model: type[Any]) -> str:
    return kind_of(model)


def find_resources(session: Session, uuids: Sequence[str]) -> dict[str, type[Any]]:
    """uuid -> the model whose table holds it, for those of ``uuids`` that exist anywhere."""
    found: dict[str, type[Any]] = {}
    wanted = set(uuids)
    for model in resource_models():
        if not wanted:
            break
        for uuid in session.scalars(select(model.uuid).where(model.uuid.in_(wanted))):
            found[uuid] = model
            wanted.discard(uuid)
    return found
