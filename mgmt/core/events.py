"""Canonical resource events on the events exchange: ``<type>.<uuid>.<action>``.

Each is published twice: on ``<ns>.events`` for nodes and agents-facing code (every subscriber
there uses the broker credentials of the nodes), and on ``<ns>.account-events`` as
``<owner account uuid>.<type>.<uuid>.<action>`` for API clients, whose broker users may bind only
under their own account (``mgmt.core.brokeradmin.client_permissions``). A resource with no owner
known (infrastructure nobody owns, a row gone before its owner was ever seen) goes under the system
account, which only admins' keys read.
"""

from __future__ import annotations

import logging
from typing import Any

from bus.aio import AsyncBus
from bus.envelope import Envelope
from bus.errors import RingstackError
from mgmt.core.owners import OwnerIndex
from mgmt.core.service import SYSTEM_ACCOUNT
from schema.api.base import Event

log = logging.getLogger(__name__)


class EventPublisher:
    def __init__(self, bus: AsyncBus, owners: OwnerIndex | None = None) -> None:
        self.bus = bus
        self.owners = owners

    async def resource_event(
        self,
        resource_type: str,
        resource_uuid: str,
        action: str,
        inventory: dict[str, Any] | None = None,
        *,
        account_uuid: str | None = None,
    ) -> None:
        """Publish after the change is committed. A failure is logged, not raised: the change
        itself stands, and subscribers resynchronise through queries. ``account_uuid``: the
        owner, when the caller knows it (otherwise it is looked up)."""
        topology = self.bus.topology
        key = topology.event_routing_key(resource_type, resource_uuid, action)
        body = Event(
            resource_uuid=resource_uuid, resource_type=resource_type, action=action, inventory=inventory
        ).to_wire()
        name = f"{resource_type}.{action}"
        try:
            await self.bus.publish_event(key, name, body)
            owner = account_uuid
            if owner is None and self.owners is not None:
                owner = await self.owners.owner_of(resource_type, resource_uuid)
            await self.bus.publish(
                topology.account_events_exchange.name,
                topology.account_event_routing_key(owner or SYSTEM_ACCOUNT.uuid, key),
                Envelope(name=name, kind="event", body=body),
                persistent=True,
            )
        except RingstackError as exc:
            log.warning("event %s not published: %s", key, exc)
