"""Stuck resources: in a transitional state (a VM Starting, ...) with no live job acting on it.

Every transitional state is entered and left by a durable job (``mgmt.cluster.jobs``): the job
moves the resource into it and out again before the job itself ends, and a job whose node dies is
resumed by the next owner. So a resource in a transitional state while no job about it is pending
or running (read in one snapshot) was left there by a job that ended badly: nothing will ever move
it again. Each service that has such states registers a ``StuckResourceFinder``; the owner of each
resource found settles it by running the finder's ``settle_with`` API as a durable job (on taking
the partition over, and every ``stuck_scan_interval``), and ``GetStuckResources`` shows operators
what is stuck meanwhile.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import text
from sqlalchemy.orm import Session

LIVE_JOB_STATES = ("pending", "running")


@dataclass(frozen=True)
class StuckResource:
    resource_type: str
    uuid: str
    state: str
    since: datetime | None
    settle_with: str  # the API that settles one (a ResourceMessage taking ``uuid``)


class StuckResourceFinder:
    """Extension point: finds one kind of stuck resource (``extensions.register(StuckResourceFinder, f)``)."""

    resource_type: ClassVar[str]
    settle_with: ClassVar[str]

    def find(self, session: Session) -> list[StuckResource]:
        raise NotImplementedError


def no_live_job(column: str) -> str:
    """SQL condition: no pending or running job is about the resource whose uuid is ``column``."""
    return (
        f"NOT EXISTS (SELECT 1 FROM job WHERE job.resource_uuid = {column} "
        "AND job.state IN ('pending', 'running'))"
    )


def live_jobs(session: Session, resource_uuid: str, besides: str | None = None) -> list[str]:
    """The pending or running jobs about a resource (but ``besides``)."""
    rows = session.execute(
        text(
            "SELECT uuid FROM job WHERE resource_uuid = :r AND state IN ('pending', 'running') "
            "AND uuid <> coalesce(:b, '')"
        ),
        {"r": resource_uuid, "b": besides},
    )
    return [str(u) for (u,) in rows]


def last_jobs(session: Session, uuids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The latest job about each resource: what an operator wants to know of a stuck one."""
    if not uuids:
        return {}
    rows = session.execute(
        text(
            "SELECT DISTINCT ON (resource_uuid) resource_uuid, uuid, name, state, error FROM job "
            "WHERE resource_uuid = ANY(:u) ORDER BY resource_uuid, created_at DESC"
        ),
        {"u": list(uuids)},
    )
    return {str(r): {"uuid": str(u), "name": str(n), "state": str(s), "error": e} for r, u, n, s, e in rows}
