"""Flow chains: a multi-step job where every completed step is undone, in reverse, if a later
step fails or the deadline passes. No half-made resources are left behind.

A step is a ``Flow`` with ``run(ctx)`` and ``rollback(ctx)``; ``ctx`` is whatever object the
chain's steps share (ZStack's flow data). A failing rollback is recorded and the remaining
rollbacks still run; the error raised names the failed step, what was rolled back and what
could not be.

A chain run by fenced work (a job) that has lost its ownership (``mgmt.core.db.ownership_lost``)
does not roll back, or stops rolling back: its undo steps would act on agents as a stale owner,
racing the new owner, who resumes the job and cleans up from the database's record instead.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from bus.errors import RingstackError, Sys
from mgmt.core.db import CURRENT_FENCE, ownership_lost

log = logging.getLogger(__name__)

C = TypeVar("C")
StepFn = Callable[[C], Awaitable[None]]


@dataclass(frozen=True)
class Flow(Generic[C]):
    """A step. ``undo_failed``: the rollback also runs when this very step fails (or is cancelled,
    or times out) half-way, e.g. a command sent to an agent whose effect may have happened even
    though no answer came; such a rollback must be safe when the step did nothing."""

    name: str
    run: StepFn[C]
    rollback: StepFn[C] | None = None
    undo_failed: bool = False


@dataclass
class FlowOutcome:
    """What happened, for the error's details and for tests."""

    completed: list[str] = field(default_factory=list)
    rolled_back: list[str] = field(default_factory=list)
    rollback_failures: list[dict[str, str]] = field(default_factory=list)
    failed_step: str | None = None
    abandoned: list[str] = field(default_factory=list)  # not rolled back: ownership was lost


class FlowChain(Generic[C]):
    def __init__(self, name: str, flows: Sequence[Flow[C]], *, rollback_timeout: float = 60.0) -> None:
        self.name = name
        self.flows = list(flows)
        self.rollback_timeout = rollback_timeout
        self.outcome = FlowOutcome()

    async def run(self, ctx: C, *, deadline: float | None = None) -> C:
        """Run every step; ``outcome`` describes this run (a chain object may be run again)."""
        self.outcome = FlowOutcome()
        done: list[Flow[C]] = []
        for flow in self.flows:
            try:
                await _before(flow.run(ctx), deadline, f"{self.name}/{flow.name}")
            except (Exception, asyncio.CancelledError) as exc:
                self.outcome.failed_step = flow.name
                await self._rollback(ctx, [*done, flow] if flow.undo_failed else done, exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                raise self._failure(flow, exc) from exc
            done.append(flow)
            self.outcome.completed.append(flow.name)
        return ctx

    async def _rollback(self, ctx: C, done: list[Flow[C]], cause: BaseException) -> None:
        lost = ownership_lost(cause)
        for flow in reversed(done):
            if flow.rollback is None:
                continue
            if lost or ownership_lost():
                lost = True
                self.outcome.abandoned.append(flow.name)
                continue
            try:
                # Rollback must run even after the deadline: it has a budget of its own.
                await asyncio.wait_for(flow.rollback(ctx), self.rollback_timeout)
                self.outcome.rolled_back.append(flow.name)
            except Exception as exc:
                log.exception("%s: rollback of %s failed", self.name, flow.name)
                self.outcome.rollback_failures.append({"step": flow.name, "error": _describe(exc)})
        if self.outcome.abandoned:
            log.warning(
                "%s: ownership lost at step %s; rollback of %s left to the next owner",
                self.name,
                self.outcome.failed_step,
                ", ".join(self.outcome.abandoned),
            )

    def _failure(self, flow: Flow[C], exc: BaseException) -> RingstackError:
        cause = exc if isinstance(exc, RingstackError) else None
        code = cause.code if cause else Sys.INTERNAL
        message = cause.message if cause else f"internal error in {self.name}/{flow.name}"
        if self.outcome.abandoned:
            # Not a failure of the request: its undo is left to the next owner, who can do it only
            # by resuming the job, so the job must not end here (the runner leaves it running).
            code = Sys.NOT_OWNER
            message = (
                f"{self.name}: ownership lost at step {flow.name}; the next owner resumes it ({message})"
            )
        details: dict[str, Any] = {
            "chain": self.name,
            "failedStep": flow.name,
            "rolledBack": list(self.outcome.rolled_back),
        }
        if self.outcome.rollback_failures:
            details["rollbackFailures"] = list(self.outcome.rollback_failures)
        if self.outcome.abandoned:
            details["leftToNextOwner"] = list(self.outcome.abandoned)
            fence = CURRENT_FENCE.get()
            if fence is not None:
                details["partition"] = fence.partition
        if cause is None:
            log.error("%s: step %s failed", self.name, flow.name, exc_info=exc)
        return RingstackError(
            code,
            message,
            details={**(cause.details if cause else {}), **details},
            cause=cause.cause if cause else None,
        )


async def _before(step: Awaitable[None], deadline: float | None, what: str) -> None:
    if deadline is None:
        await step
        return
    left = deadline - time.time()
    if left <= 0:
        if asyncio.iscoroutine(step):
            step.close()
        raise RingstackError(Sys.TIMEOUT, f"{what} did not start before the deadline")
    timer = asyncio.timeout(left)
    try:
        async with timer:
            await step
    except TimeoutError:
        if not timer.expired():
            raise  # the step's own TimeoutError, not our deadline
        raise RingstackError(Sys.TIMEOUT, f"{what} did not finish before the deadline") from None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, RingstackError):
        return f"{exc.code}: {exc.message}"
    if isinstance(exc, TimeoutError):
        return "rollback timed out"
    return f"{type(exc).__name__}: {exc}"
