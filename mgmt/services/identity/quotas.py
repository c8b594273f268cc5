"""Quotas as clients see them: every account's effective limit for every quota.

Only overrides are stored (table ``quota``); defaults come from the node config, so changing a
default changes it for every account without an override. ``QueryQuota`` therefore queries a view
computed in SQL (accounts x quota names, left-joined to the overrides), mapped to a class so the
ordinary query compiler, paging and visibility rules apply to it unchanged.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, cast

from pydantic.alias_generators import to_camel
from sqlalchemy import BigInteger, String, and_, column, func, select, true, values
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import DeclarativeBase, Session

from mgmt.core import quota
from mgmt.core.query import QueryTarget
from schema.api.identity import QuotaInventory
from schema.db.base import Base
from schema.db.identity import Account, Quota


class _ViewBase(DeclarativeBase):
    """Classes mapped to SELECTs: a metadata of their own, so migrations never see them."""


_views: dict[tuple[tuple[str, int], ...], QueryTarget] = {}


def quota_uuid(identity_uuid: str, name: str) -> str:
    """The uuid of an account's quota, stored override or not: md5(identity_uuid || name), the
    same expression the view computes in SQL."""
    return hashlib.md5((identity_uuid + name).encode("utf-8"), usedforsecurity=False).hexdigest()


def _view_model(defaults: Mapping[str, int]) -> type[Any]:
    names = values(
        column("name", String(255)), column("default_value", BigInteger), name="quota_default"
    ).data(sorted(defaults.items()))
    view = (
        select(
            func.md5(Account.uuid + names.c.name).label("uuid"),
            names.c.name.label("name"),
            Account.uuid.label("identity_uuid"),
            # Visibility works on owner_account_uuid: an account sees its own quotas.
            Account.uuid.label("owner_account_uuid"),
            func.coalesce(Quota.value, names.c.default_value).label("value"),
        )
        .select_from(Account)
        .join(names, true())
        .outerjoin(Quota, and_(Quota.identity_uuid == Account.uuid, Quota.name == names.c.name))
        .subquery("effective_quota")
    )
    return type(
        f"EffectiveQuota{len(_views)}",
        (_ViewBase,),
        {"__table__": view, "__mapper_args__": {"primary_key": [view.c.uuid]}},
    )


def query_target() -> QueryTarget:
    """The query target for the current defaults (built once per distinct set of defaults: a
    plugin may define a quota after start, and every node of a process shares the registry)."""
    defaults = quota.default_limits()
    key = tuple(sorted(defaults.items()))
    target = _views.get(key)
    if target is None:
        model = _view_model(defaults)
        fields = {to_camel(name): getattr(model, name) for name in ("uuid", "name", "identity_uuid", "value")}

        def to_inventory(row: Any) -> dict[str, Any]:
            return QuotaInventory.model_validate(row, from_attributes=True).to_wire()

        # The query compiler only needs a mapped class with uuid/owner_account_uuid columns.
        target = QueryTarget(cast(type[Base], model), fields, to_inventory)
        _views[key] = target
    return target


def set_override(session: Session, identity_uuid: str, name: str, value: int) -> QuotaInventory:
    uuid = quota_uuid(identity_uuid, name)
    stmt = insert(Quota).values(uuid=uuid, identity_uuid=identity_uuid, name=name, value=value)
    session.execute(
        stmt.on_conflict_do_update(
            index_elements=[Quota.identity_uuid, Quota.name],
            set_={"value": stmt.excluded.value, "updated_at": func.now()},
        )
    )
    return QuotaInventory(uuid=uuid, name=name, identity_uuid=identity_uuid, value=value)
