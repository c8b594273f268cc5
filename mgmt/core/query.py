"""ZStack's query API compiled to SQLAlchemy expressions (never string-built SQL).

A ``QueryTarget`` says which wire fields of a resource can be filtered, sorted and selected, and
which column each one is. Conditions are ANDed; operators: ``= != > < >= <=``, ``?=`` (in),
``!?=`` (not in), ``~=`` (LIKE, ``%`` wildcards), ``!~=``, ``=null``, ``!=null``. An unknown field
or a value of the wrong type is ``SYS.INVALID_ARGUMENT`` naming it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic.alias_generators import to_camel
from sqlalchemy import Boolean, DateTime, Float, Integer, Numeric, Select, String, Text, func, select
from sqlalchemy.orm import ColumnProperty, InstrumentedAttribute, Session

from bus.errors import RingstackError, invalid_argument
from mgmt.core.access import visible
from mgmt.core.service import Account
from schema.api.base import Condition, QueryMessage, QueryReply, WireModel
from schema.db.base import Base


@dataclass(frozen=True)
class Relation:
    """A nested field: ``<name>.<field of target>`` matches rows whose ``local`` column is among
    the ``remote`` column's values of the target rows matching the condition."""

    target: QueryTarget
    local: InstrumentedAttribute[Any]
    remote: InstrumentedAttribute[Any]


@dataclass(frozen=True)
class QueryTarget:
    model: type[Base]
    fields: dict[str, InstrumentedAttribute[Any]]
    to_inventory: Callable[[Any], dict[str, Any]]
    relations: dict[str, Relation] = field(default_factory=dict)

    @classmethod
    def for_model(
        cls, model: type[Base], inventory: type[WireModel], relations: dict[str, Relation] | None = None
    ) -> QueryTarget:
        """Every inventory field that is a column of the same (snake_case) name is queryable."""
        fields = {
            to_camel(name): getattr(model, name)
            for name in inventory.model_fields
            if isinstance(getattr(model, name, None), InstrumentedAttribute)
            and isinstance(getattr(model, name).property, ColumnProperty)  # relationships are not columns
        }

        def to_inventory(row: Any) -> dict[str, Any]:
            return inventory.model_validate(row, from_attributes=True).to_wire()

        return cls(model, fields, to_inventory, relations or {})

    def column(self, name: str) -> InstrumentedAttribute[Any]:
        col = self.fields.get(name)
        if col is None:
            known = sorted([*self.fields, *(f"{r}.*" for r in self.relations)])
            raise invalid_argument(f"unknown field {name!r}; queryable fields: {', '.join(known)}", field=name)
        return col


def _coerce(col: InstrumentedAttribute[Any], name: str, value: Any) -> Any:
    col_type = col.property.columns[0].type
    try:
        if isinstance(col_type, Boolean):
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("true", "false"):
                return str(value).lower() == "true"
            raise ValueError("expected true or false")
        if isinstance(col_type, Integer):
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError("expected an integer")
            return int(value) if not isinstance(value, str) else int(value.strip())
        if isinstance(col_type, Float | Numeric):
            return float(value)
        if isinstance(col_type, DateTime):
            return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
        if isinstance(value, list | dict):
            raise ValueError("expected a single value")
        return str(value)
    except (TypeError, ValueError) as exc:
        raise invalid_argument(f"bad value {value!r} for field {name!r}: {exc}", field=name) from None


def _condition(target: QueryTarget, cond: Condition, depth: int = 0) -> Any:
    head, dot, rest = cond.name.partition(".")
    if dot and head in target.relations:
        if depth >= 4:
            raise invalid_argument(f"{cond.name!r} nests too deep", field=cond.name)
        rel = target.relations[head]
        inner = _condition(rel.target, cond.model_copy(update={"name": rest}), depth + 1)
        return rel.local.in_(select(rel.remote).where(inner))
    col = target.column(cond.name)
    op = cond.op
    if op == "=null":
        return col.is_(None)
    if op == "!=null":
        return col.is_not(None)
    if cond.value is None:
        raise invalid_argument(f"operator {op!r} on {cond.name!r} needs a value", field=cond.name)
    if op in ("?=", "!?="):
        items = cond.value if isinstance(cond.value, list) else str(cond.value).split(",")
        values = [_coerce(col, cond.name, v) for v in items]
        return col.in_(values) if op == "?=" else col.not_in(values)
    if isinstance(cond.value, list):
        raise invalid_argument(f"operator {op!r} on {cond.name!r} takes a single value", field=cond.name)
    if op in ("~=", "!~="):
        if not isinstance(col.property.columns[0].type, String | Text):
            raise invalid_argument(f"operator {op!r} needs a text field; {cond.name!r} is not one", field=cond.name)
        pattern = str(cond.value)
        trailing_escapes = len(pattern) - len(pattern.rstrip("\\"))
        if trailing_escapes % 2 == 1:
            raise invalid_argument(
                f"pattern {pattern!r} for {cond.name!r} ends in a lone backslash (the escape character)", field=cond.name
            )
        return col.like(pattern) if op == "~=" else col.not_like(pattern)
    value = _coerce(col, cond.name, cond.value)
    return {
        "=": col.__eq__,
        "!=": col.__ne__,
        ">": col.__gt__,
        "<": col.__lt__,
        ">=": col.__ge__,
        "<=": col.__le__,
    }[op](value)


def compile_filter(target: QueryTarget, msg: QueryMessage, base: Select[Any] | None = None) -> Select[Any]:
    stmt = base if base is not None else select(target.model)
    for cond in msg.conditions:
        stmt = stmt.where(_condition(target, cond))
    return stmt


def run_query(
    session: Session,
    target: QueryTarget,
    msg: QueryMessage,
    account: Account | None = None,
    base: Select[Any] | None = None,
) -> QueryReply:
    """Run a query; with ``account``, only rows it may see (see ``mgmt.core.access``)."""
    stmt = compile_filter(target, msg, base)
    if account is not None:
        stmt = visible(stmt, target.model, account)
    total = None
    if msg.count or msg.reply_with_count:
        total = session.scalar(select(func.count()).select_from(stmt.order_by(None).subquery()))
        if msg.count:
            return QueryReply(inventories=[], total=total)
    if msg.sort_by is not None:
        col = target.column(msg.sort_by)
        stmt = stmt.order_by(col.desc() if msg.sort_direction == "desc" else col.asc())
    # A stable tie-break keeps paging deterministic.
    stmt = stmt.order_by(target.model.uuid).offset(msg.start).limit(msg.limit)  # type: ignore[attr-defined]
    rows = session.scalars(stmt).all()
    inventories = [target.to_inventory(row) for row in rows]
    if msg.fields:
        for name in msg.fields:
            target.column(name)
        inventories = [{k: inv.get(k) for k in msg.fields} for inv in inventories]
    return QueryReply(inventories=inventories, total=total)


__all__ = ["QueryTarget", "RingstackError", "compile_filter", "run_query"]
