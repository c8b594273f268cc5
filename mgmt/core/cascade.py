"""Deletion cascades, as ZStack's: deleting a parent handles its children by one rule per mode.

- ``Permissive``: refuse with ``SYS.RESOURCE_IN_USE`` while the resource has children (the reply
  lists them), so nothing is deleted by surprise.
- ``Enforcing``: delete every descendant, deepest first, then the resource itself.

Each resource kind that can be a child registers a ``CascadeRule`` naming its parent kinds, how to
find its rows under given parents, and how to delete them. The whole cascade runs in the caller's
one transaction, so a failure anywhere rolls all of it back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy.orm import Session

from bus.errors import RingstackError, Sys

RESOURCE_IN_USE = Sys.RESOURCE_IN_USE

FindChildren = Callable[[Session, str, Sequence[str]], list[str]]
DeleteRows = Callable[[Session, Sequence[str]], None]


@dataclass(frozen=True)
class CascadeRule:
    kind: str  # e.g. "cluster"
    parents: tuple[str, ...]  # e.g. ("zone",)
    children_of: FindChildren  # (session, parent_kind, parent_uuids) -> child uuids of this kind
    delete: DeleteRows  # (session, uuids) -> None; deletes the rows (children already gone)


class CascadeRegistry:
    def __init__(self) -> None:
        self._rules: dict[str, CascadeRule] = {}

    def register(self, rule: CascadeRule) -> None:
        if rule.kind in self._rules:
            raise TypeError(f"a cascade rule for {rule.kind} is already registered")
        self._rules[rule.kind] = rule

    def _child_rules(self, kind: str) -> list[CascadeRule]:
        return [r for r in self._rules.values() if kind in r.parents]

    def children(self, session: Session, kind: str, uuids: Sequence[str]) -> dict[str, list[str]]:
        """Direct children of the given resources, by kind (kinds without any are left out)."""
        found: dict[str, list[str]] = {}
        for rule in self._child_rules(kind):
            child_uuids = rule.children_of(session, kind, uuids)
            if child_uuids:
                found[rule.kind] = child_uuids
        return found

    def check(self, session: Session, kind: str, uuid: str) -> None:
        """Permissive mode: refuse while ``uuid`` has children."""
        children = self.children(session, kind, [uuid])
        if children:
            summary = ", ".join(f"{len(v)} {k}" for k, v in sorted(children.items()))
            raise RingstackError(
                RESOURCE_IN_USE,
                f"{kind} {uuid} still has {summary}; delete them first or use deleteMode=Enforcing",
                details={"children": children},
            )

    def delete_descendants(self, session: Session, kind: str, uuids: Sequence[str]) -> dict[str, list[str]]:
        """Enforcing mode: delete every descendant, deepest first. Returns what was deleted."""
        deleted: dict[str, list[str]] = {}
        self._delete_below(session, kind, list(uuids), deleted, depth=0)
        return deleted

    def _delete_below(
        self, session: Session, kind: str, uuids: list[str], deleted: dict[str, list[str]], depth: int
    ) -> None:
        if depth > 32:
            raise RuntimeError(f"cascade rules loop below {kind}")
        for child_kind, child_uuids in self.children(session, kind, uuids).items():
            self._delete_below(session, child_kind, child_uuids, deleted, depth + 1)
            self._rules[child_kind].delete(session, child_uuids)
            deleted.setdefault(child_kind, []).extend(child_uuids)

    def delete(self, session: Session, kind: str, uuid: str, mode: str) -> dict[str, list[str]]:
        """Apply the deletion mode to ``uuid``'s children; the caller then deletes ``uuid`` itself."""
        if mode == "Enforcing":
            return self.delete_descendants(session, kind, [uuid])
        self.check(session, kind, uuid)
        return {}
