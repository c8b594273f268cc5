"""Canonical resource events on the events exchange: ``<type>.<uuid>.<action>``."""

from __future__ import annotations

import logging
from typing import Any

from bus.aio import AsyncBus
from bus.errors import RingstackError
from schema.api.base import Event

log = logging.getLogger(__name__)


class EventPublisher:
    def __init__(self, bus: AsyncBus) -> None:
        self.bus = bus

    async def resource_event(
        self, resource_type: str, resource_uuid: str, action: str, inventory: dict[str, Any] | None = None
    ) -> None:
        """Publish after the change is committed. A failure is logged, not raised: the change
        itself stands, and subscribers resynchronise through queries."""
        key = self.bus.topology.event_routing_key(resource_type, resource_uuid, action)
        body = Event(
            resource_uuid=resource_uuid, resource_type=resource_type, action=action, inventory=inventory
        ).to_wire()
        try:
            await self.bus.publish_event(key, f"{resource_type}.{action}", body)
        except RingstackError as exc:
            log.warning("event %s not published: %s", key, exc)
