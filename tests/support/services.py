"""A service that exists only for tests, loaded into nodes through ``extra_services``."""

from __future__ import annotations

import asyncio
from typing import ClassVar

from pydantic import Field

from mgmt.core.events import EventPublisher
from mgmt.core.service import CallContext, Service, handler
from schema.api.base import ApiMessage, Reply


class SleepReply(Reply):
    slept: float
    tag: str


class TestSleep(ApiMessage):
    """Sleep, announcing the start on the events exchange so a test can await it."""

    __test__ = False  # not a pytest test class
    service: ClassVar[str] = "testing"
    reply = SleepReply

    seconds: float = Field(ge=0, le=60)
    tag: str = "t"


class TestingService(Service):
    __test__ = False
    name = "testing"

    events: EventPublisher

    @handler(TestSleep)
    async def sleep(self, msg: TestSleep, ctx: CallContext) -> SleepReply:
        await self.events.resource_event("testsleep", msg.tag, "started")
        await asyncio.sleep(msg.seconds)
        return SleepReply(slept=msg.seconds, tag=msg.tag)
