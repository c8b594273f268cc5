"""ZStack's query API compiled to SQLAlchemy expressions (never string-built SQL).

A ``QueryTarget`` says which wire fields of a resource can be filtered, sorted and selected, and
which column each one is. A target made with a ``name`` is registered under it, and other
resources' relations name it (``Relation("zone", ...)``) rather than import it: services stay
independent, a nested field such as ``cluster.zone.name`` resolves when the query runs, and a
plugin adds relations to a core resource with ``add_relation`` without editing it. Conditions are
ANDed; operators: ``= != > < >= <=``, ``?=`` (in),
``!?=`` (not in), ``~=`` (LIKE, ``%`` wildcards), ``!~=``, ``=null``, ``!=null``. An unknown field
or a value of the wrong type is ``SYS.INVALID_ARGUMENT`` naming it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic.alias_generators import to_camel
from sqlalchemy import Boolean, DateTime, Float, Integer, Numeric, Select, String, Text, and_, func, select
from sqlalchemy.orm import ColumnProperty, InstrumentedAttribute, Session

from bus.errors import RingstackError, Sys, invalid_argument
from mgmt.core.access import visible, visible_clause
from mgmt.core.service import Account
from schema.api.base import Condition, QueryMessage, QueryReply, WireModel
from schema.db.base import Base

_TARGETS: dict[str, QueryTarget] = {}
_EXTRA_RELATIONS: dict[str, dict[str, Relation]] = {}


@dataclass(frozen=True)
class Relation:
    """A nested field: ``<name>.<field of target>`` matches rows whose ``local`` column is among
    the ``remote`` column's values of the target rows matching the condition. ``through`` names
    a link table's two columns, (the one matching ``local``, the one matching ``remote``), for
    many-to-many relations such as a primary storage's attached clusters."""

    target: QueryTarget | str
    local: InstrumentedAttribute[Any]
    remote: InstrumentedAttribute[Any]
    through: tuple[InstrumentedAttribute[Any], InstrumentedAttribute[Any]] | None = None

    def resolve(self, path: str) -> QueryTarget:
        if isinstance(self.target, QueryTarget):
            return self.target
        found = _TARGETS.get(self.target)
        if found is None:  # the service that owns it is not part of this node's code
            raise invalid_argument(f"{path!r} is not queryable here: no resource {self.target!r}", field=path)
        return found

    def matching(self, inner: Any) -> Any:
        """The condition on the local column, given ``inner`` on the target's rows."""
        remote_values = select(self.remote).where(inner)
        if self.through is not None:
            to_local, to_remote = self.through
            remote_values = select(to_local).where(to_remote.in_(remote_values))
        return self.local.in_(remote_values)


def add_relation(target: str, name: str, relation: Relation) -> None:
    """Extension point: give the resource registered as ``target`` a nested field ``name``."""
    _EXTRA_RELATIONS.setdefault(target, {})[name] = relation


@dataclass(frozen=True)
class QueryTarget:
    model: type[Base]
    fields: dict[str, InstrumentedAttribute[Any]]
    to_inventory: Callable[[Any], dict[str, Any]]
    relations: dict[str, Relation] = field(default_factory=dict)
    name: str | None = None
    # ``fields=`` may also pick inventory fields that are not columns (a VM's ``vmNics``)
    selectable: frozenset[str] = frozenset()

    @classmethod
    def for_model(
        cls,
        model: type[Base],
        inventory: type[WireModel],
        relations: dict[str, Relation] | None = None,
        name: str | None = None,
    ) -> QueryTarget:
        """Every inventory field that is a column of the same (snake_case) name is queryable;
        with ``name``, the target is registered for other resources' relations to name."""
        fields = {
            to_camel(name): getattr(model, name)
            for name in inventory.model_fields
            if isinstance(getattr(model, name, None), InstrumentedAttribute)
            and isinstance(getattr(model, name).property, ColumnProperty)  # relationships are not columns
        }

        def to_inventory(row: Any) -> dict[str, Any]:
            return inventory.model_validate(row, from_attributes=True).to_wire()

        selectable = frozenset(to_camel(n) for n in inventory.model_fields)
        target = cls(model, fields, to_inventory, relations or {}, name, selectable)
        if name is not None:
            _TARGETS[name] = target
        return target

    def relation(self, name: str) -> Relation | None:
        found = self.relations.get(name)
        if found is None and self.name is not None:
            found = _EXTRA_RELATIONS.get(self.name, {}).get(name)
        return found

    def relation_names(self) -> list[str]:
        extra = _EXTRA_RELATIONS.get(self.name, {}) if self.name is not None else {}
        return [*self.relations, *extra]

    def column(self, name: str) -> InstrumentedAttribute[Any]:
        col = self.fields.get(name)
        if col is None:
            known = sorted([*self.fields, *(f"{r}.*" for r in self.relation_names())])
            raise invalid_argument(
                f"unknown field {name!r}; queryable fields: {', '.join(known)}", field=name
            )
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


def _condition(target: QueryTarget, cond: Condition, account: Account | None, depth: int = 0) -> Any:
    head, dot, rest = cond.name.partition(".")
    rel = target.relation(head) if dot else None
    if rel is not None:
        if depth >= 4:
            raise invalid_argument(f"{cond.name!r} nests too deep", field=cond.name)
        related = rel.resolve(cond.name)
        inner = _condition(related, cond.model_copy(update={"name": rest}), account, depth + 1)
        # Every step of the path sees only what the caller may see: ``image vmInstance.uuid=X``
        # must match nothing when X is another account's VM, exactly as when X does not exist.
        hidden = None if account is None else visible_clause(related.model, account)
        return rel.matching(inner if hidden is None else and_(inner, hidden))
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
            raise invalid_argument(
                f"operator {op!r} needs a text field; {cond.name!r} is not one", field=cond.name
            )
        pattern = str(cond.value)
        trailing_escapes = len(pattern) - len(pattern.rstrip("\\"))
        if trailing_escapes % 2 == 1:
            raise invalid_argument(
                f"pattern {pattern!r} for {cond.name!r} ends in a lone backslash (the escape character)",
                field=cond.name,
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


def compile_filter(
    target: QueryTarget, msg: QueryMessage, base: Select[Any] | None = None, account: Account | None = None
) -> Select[Any]:
    """The query's conditions on ``base``; with ``account``, relations reach only rows it may see."""
    stmt = base if base is not None else select(target.model)
    for cond in msg.conditions:
        try:
            stmt = stmt.where(_condition(target, cond, account))
        except RingstackError as exc:
            if exc.code != Sys.INVALID_ARGUMENT or "." not in cond.name:
                raise
            # An inner error names the inner field ("name"); say which condition it was in.
            raise invalid_argument(f"{exc.message} (in condition {cond.name!r})", field=cond.name) from None
    return stmt


def run_query(
    session: Session,
    target: QueryTarget,
    msg: QueryMessage,
    account: Account | None = None,
    base: Select[Any] | None = None,
    *,
    filter_rows: bool = True,
) -> QueryReply:
    """Run a query; with ``account``, only rows it may see (see ``mgmt.core.access``), and every
    relation a condition goes through is limited to what it may see too. ``filter_rows=False``: the
    target's own rows are not filtered (a catalogue every account reads, or a ``base`` that applied
    visibility its own way), its relations still are. Counts, paging and sorting are over the
    filtered rows only."""
    stmt = compile_filter(target, msg, base, account)
    if account is not None and filter_rows:
        stmt = visible(stmt, target.model, account)
    total = None
    if msg.count or msg.reply_with_count:
        total = session.scalar(select(func.count()).select_from(stmt.order_by(None).subquery()))
        if msg.count:
            return QueryReply(inventories=[], total=total)
    uuid = target.model.uuid  # type: ignore[attr-defined]
    order: list[Any] = []
    if msg.sort_by is not None:
        col = target.column(msg.sort_by)
        order.append(col.desc() if msg.sort_direction == "desc" else col.asc())
    order.append(uuid)  # a stable tie-break keeps paging deterministic
    if msg.start:
        # Page the uuids first, then load that page's rows: OFFSET then skips index entries (an
        # index-only scan of the pk) rather than whole rows. start=50000 of 100k VMs: 357 -> 25 ms.
        page = stmt.with_only_columns(uuid).order_by(None).order_by(*order).offset(msg.start).limit(msg.limit)
        stmt = select(target.model).where(uuid.in_(page)).order_by(*order)
    else:
        stmt = stmt.order_by(None).order_by(*order).limit(msg.limit)
    rows = session.scalars(stmt).all()
    inventories = [target.to_inventory(row) for row in rows]
    if msg.fields:
        for name in msg.fields:
            if name not in target.selectable:
                target.column(name)
        inventories = [{k: inv.get(k) for k in msg.fields} for inv in inventories]
    return QueryReply(inventories=inventories, total=total)


__all__ = ["QueryTarget", "Relation", "RingstackError", "add_relation", "compile_filter", "run_query"]
