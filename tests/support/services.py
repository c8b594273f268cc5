"""A service that exists only for tests, loaded into nodes through ``extra_services``."""

from __future__ import annotations

import asyncio
import contextlib
from typing import ClassVar

from pydantic import Field
from sqlalchemy import text
from sqlalchemy.orm import Session

from mgmt.core.db import Database
from mgmt.core.events import EventPublisher
from mgmt.core.service import CallContext, Service, handler
from schema.api.base import ApiMessage, Reply, ResourceMessage


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

    @handler(TestSleep, cancellable=True)
    async def sleep(self, msg: TestSleep, ctx: CallContext) -> SleepReply:
        await self.events.resource_event("testsleep", msg.tag, "started")
        await asyncio.sleep(msg.seconds)
        return SleepReply(slept=msg.seconds, tag=msg.tag)


# ---------------------------------------------------------------------- an audited operation

AUDIT_DDL = """
CREATE TABLE IF NOT EXISTS test_audit (
    id bigserial PRIMARY KEY,
    job_uuid varchar(32) NOT NULL,
    resource_uuid varchar(32) NOT NULL,
    node_uuid varchar(32) NOT NULL,
    started_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    ended_at timestamptz
)
"""


class AuditReply(Reply):
    node_uuid: str


class AuditedWork(ResourceMessage):
    """Work on one resource that records, in fenced transactions, when it starts and ends and on
    which node, so a test can prove no two nodes ever worked on one resource at once."""

    __test__ = False
    service: ClassVar[str] = "testing"
    reply = AuditReply

    seconds: float = Field(ge=0, le=60)


class AuditService(Service):
    __test__ = False
    name = "testing-audit"

    db: Database
    node_uuid: str

    @handler(AuditedWork, cancellable=True)
    async def work(self, msg: AuditedWork, ctx: CallContext) -> AuditReply:
        node_uuid = self.node_uuid

        def start(session: Session) -> int:
            return int(
                session.execute(
                    text(
                        "INSERT INTO test_audit (job_uuid, resource_uuid, node_uuid) VALUES (:j, :r, :n) RETURNING id"
                    ),
                    {"j": ctx.request_id, "r": msg.uuid, "n": node_uuid},
                ).scalar_one()
            )

        def end(session: Session, row_id: int) -> None:
            session.execute(
                text("UPDATE test_audit SET ended_at = clock_timestamp() WHERE id = :i"), {"i": row_id}
            )

        def finished_before(session: Session) -> str | None:
            return session.execute(
                text("SELECT node_uuid FROM test_audit WHERE job_uuid = :j AND ended_at IS NOT NULL"),
                {"j": ctx.request_id},
            ).scalar()

        # Idempotent like every handler must be: a job resumed after its node died right after the
        # work finished (before the job was marked done) does not do the work twice.
        if ctx.resumed and (done_by := await self.db.run(finished_before)) is not None:
            return AuditReply(node_uuid=done_by)
        row_id = await self.db.run(start)
        await asyncio.sleep(msg.seconds)
        await self.db.run(end, row_id)
        return AuditReply(node_uuid=node_uuid)


# ---------------------------------------------------------------------- a probe of the serial lane


class LaneReply(Reply):
    peak: int  # the most handlers of this probe's resource seen running at once


class LaneProbe(ResourceMessage):
    """Runs until another probe of the same resource joins it, or ``hold`` seconds pass; replies
    with how many ran at once. Serial (the default): the most is 1, on every path."""

    __test__ = False
    service: ClassVar[str] = "testing"
    reply = LaneReply

    hold: float = Field(ge=0, le=10)


class UnorderedLaneProbe(LaneProbe):
    """The same handler declared ``serial=False``: probes of one resource may overlap."""


class LaneProbeService(Service):
    __test__ = False
    name = "testing-lanes"

    def __init__(self, **deps: object) -> None:
        super().__init__(**deps)
        self.inside: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self._joined: dict[str, asyncio.Event] = {}

    async def _probe(self, msg: LaneProbe) -> LaneReply:
        key = msg.uuid
        self.inside[key] = self.inside.get(key, 0) + 1
        self.peak[key] = max(self.peak.get(key, 0), self.inside[key])
        joined = self._joined.setdefault(key, asyncio.Event())
        if self.inside[key] > 1:
            joined.set()
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(joined.wait(), msg.hold)
        finally:
            self.inside[key] -= 1
        return LaneReply(peak=self.peak[key])

    @handler(LaneProbe)
    async def serial_probe(self, msg: LaneProbe, ctx: CallContext) -> LaneReply:
        return await self._probe(msg)

    @handler(UnorderedLaneProbe, serial=False)
    async def unordered_probe(self, msg: UnorderedLaneProbe, ctx: CallContext) -> LaneReply:
        return await self._probe(msg)


# ---------------------------------------------------------------------- a job held at a gate


class GateReply(Reply):
    uuid: str


class GatedWork(ResourceMessage):
    """A job that, once running, waits until the test opens the gate (``GateService.gate``)."""

    __test__ = False
    service: ClassVar[str] = "testing"
    reply = GateReply


class GateService(Service):
    __test__ = False
    name = "testing-gate"

    def __init__(self, **deps: object) -> None:
        super().__init__(**deps)
        self.entered = asyncio.Event()  # set when a GatedWork starts running
        self.gate = asyncio.Event()  # set by the test to let it finish

    @handler(GatedWork)
    async def work(self, msg: GatedWork, ctx: CallContext) -> GateReply:
        self.entered.set()
        await self.gate.wait()
        return GateReply(uuid=msg.uuid)
