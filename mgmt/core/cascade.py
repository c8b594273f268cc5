"""Deletion cascades, as ZStack's: deleting a parent handles its children by one rule per mode.

- ``Permissive``: refuse with ``SYS.RESOURCE_IN_USE`` while the resource has children (the reply
  lists them), so nothing is deleted by surprise.
- ``Enforcing``: delete every descendant, deepest first, then the resource itself.

Each resource kind that can be a child registers a ``CascadeRule`` naming its parent kinds, how to
find its rows under given parents, and how to delete them. The whole cascade runs in the caller's
one transaction, so a failure anywhere rolls all of it back.

Links (a primary storage attached to a cluster, a backup storage attached to a zone) are rules
too, but they veto no deletion (``vetoes=()``): they are removed with either end in both modes,
as ZStack detaches storage from a cluster or zone that goes. A link may still veto one of its
parents (ZStack refuses to delete a primary storage still attached to clusters). Links are not
resources (``resource=False``): they are not reported among the deleted, so no events name them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session

from bus.errors import RingstackError, Sys

if TYPE_CHECKING:
    from mgmt.core.events import EventPublisher

RESOURCE_IN_USE = Sys.RESOURCE_IN_USE

FindChildren = Callable[[Session, str, Sequence[str]], list[str]]
DeleteRows = Callable[[Session, Sequence[str]], None]


@dataclass(frozen=True)
class CascadeRule:
    kind: str  # e.g. "cluster"
    parents: tuple[str, ...]  # e.g. ("zone",)
    children_of: FindChildren  # (session, parent_kind, parent_uuids) -> child uuids of this kind
    delete: DeleteRows  # (session, uuids) -> None; deletes the rows (children already gone)
    # Parent kinds whose Permissive deletion these children refuse; None: every parent.
    vetoes: tuple[str, ...] | None = None
    # False for links: deleted silently, not reported (so no events name them).
    resource: bool = True

    def vetoes_parent(self, parent_kind: str) -> bool:
        return self.vetoes is None or parent_kind in self.vetoes


class CascadeRegistry:
    def __init__(self) -> None:
        self._rules: dict[str, CascadeRule] = {}

    def register(self, rule: CascadeRule) -> None:
        if rule.kind in self._rules:
            raise TypeError(f"a cascade rule for {rule.kind} is already registered")
        self._rules[rule.kind] = rule

    def unregister(self, kind: str) -> None:
        """Forget a rule (a service that registered it is stopping); unknown kinds are ignored."""
        self._rules.pop(kind, None)

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
        """Permissive mode: refuse while ``uuid`` has children that veto its deletion."""
        children = {
            child_kind: uuids
            for child_kind, uuids in self.children(session, kind, [uuid]).items()
            if self._rules[child_kind].vetoes_parent(kind)
        }
        if children:
            summary = ", ".join(f"{len(v)} {k}" for k, v in sorted(children.items()))
            raise RingstackError(
                RESOURCE_IN_USE,
                f"{kind} {uuid} still has {summary}; delete them first or use deleteMode=Enforcing",
                details={"children": children},
            )

    def delete_descendants(self, session: Session, kind: str, uuids: Sequence[str]) -> dict[str, list[str]]:
        """Enforcing mode: delete every descendant, deepest first. Returns the resources deleted."""
        deleted: dict[str, list[str]] = {}
        self._delete_below(session, kind, list(uuids), deleted, depth=0)
        return deleted

    def _delete_below(
        self, session: Session, kind: str, uuids: list[str], deleted: dict[str, list[str]], depth: int
    ) -> None:
        if depth > 32:
            raise RuntimeError(f"cascade rules loop below {kind}")
        for child_kind, child_uuids in self.children(session, kind, uuids).items():
            rule = self._rules[child_kind]
            self._delete_below(session, child_kind, child_uuids, deleted, depth + 1)
            rule.delete(session, child_uuids)
            if rule.resource:
                deleted.setdefault(child_kind, []).extend(child_uuids)

    def delete(self, session: Session, kind: str, uuid: str, mode: str) -> dict[str, list[str]]:
        """Apply the deletion mode to ``uuid``'s children; the caller then deletes ``uuid`` itself.

        Permissive refuses while a vetoing child exists; what is left (links) goes in both modes.
        """
        if mode != "Enforcing":
            self.check(session, kind, uuid)
        return self.delete_descendants(session, kind, [uuid])


async def announce_deleted(
    events: EventPublisher, cascaded: dict[str, list[str]], kind: str | None = None, uuid: str | None = None
) -> None:
    """After the commit: a ``deleted`` event for every resource a cascade removed, then the root."""
    for child_kind, uuids in cascaded.items():
        for child_uuid in uuids:
            await events.resource_event(child_kind, child_uuid, "deleted")
    if kind is not None and uuid is not None:
        await events.resource_event(kind, uuid, "deleted")
