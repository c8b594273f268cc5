"""The two edits almost every resource has: rename/redescribe, and enable/disable.

Each service used to write both out again; they differ only in the model, the inventory and the
event kind, which is what these take.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy.orm import Session

from mgmt.core.access import load_visible
from mgmt.core.db import Database
from mgmt.core.events import EventPublisher
from mgmt.core.service import Account
from schema.api.base import WireModel

Inv = TypeVar("Inv", bound=WireModel)


async def update_name_description(
    db: Database,
    events: EventPublisher,
    model: type[Any],
    kind: str,
    uuid: str,
    account: Account,
    inventory: Callable[[Any], Inv],
    name: str | None,
    description: str | None,
) -> Inv:
    """Set whichever of name and description is given; publish ``<kind>.<uuid>.updated``."""

    def update(session: Session) -> Inv:
        row = load_visible(session, model, uuid, account, kind)
        if name is not None:
            row.name = name
        if description is not None:
            row.description = description
        session.flush()
        return inventory(row)

    inv = await db.run(update)
    await events.resource_event(kind, uuid, "updated", inv.to_wire())
    return inv


async def change_enabled_state(
    db: Database,
    events: EventPublisher,
    model: type[Any],
    kind: str,
    uuid: str,
    account: Account,
    inventory: Callable[[Any], Inv],
    state_event: str,
) -> Inv:
    """``enable`` / ``disable``; publish ``<kind>.<uuid>.state`` only when the state changed."""
    new_state = "Enabled" if state_event == "enable" else "Disabled"

    def change(session: Session) -> tuple[Inv, bool]:
        row = load_visible(session, model, uuid, account, kind)
        changed = row.state != new_state
        row.state = new_state
        session.flush()
        return inventory(row), changed

    inv, changed = await db.run(change)
    if changed:
        await events.resource_event(kind, uuid, "state", inv.to_wire())
    return inv
