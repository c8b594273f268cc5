"""Flow chains, the one way to run a multi-step operation: every completed step is undone, in
reverse, if a later step fails or the deadline passes. No half-made resources are left behind.

A step is a ``Flow`` with ``run(ctx)`` and its undo; ``ctx`` is the operation's typed context (a
dataclass of its own: ``CreatePlan``, ``StartVm``, ``AttachVolume``, ...; ZStack's flow data,
without the untyped map). A step's undo is one of two kinds:

- ``rollback(ctx)``: inside ringstack (a database transaction). A failing rollback is recorded,
  the remaining undos still run, and the error raised names what could not be undone;
- ``cleanup(ctx)``: on hosts, as idempotent agent commands (``Cleanup``). The chain hands them to
  its ``Garbage`` collector, which sends them and, when an agent refuses or is down, records each
  durably and retries it (on the host's reconnect, and on a back-off) until it is done
  (``mgmt.services.garbage``; ZStack's garbage collectors). The error then lists them as
  ``cleanupsPending``.

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
from typing import Any, Generic, Protocol, TypeVar

from bus.errors import RingstackError, Sys
from mgmt.core.db import CURRENT_FENCE, ownership_lost
from schema.agent_base import HostCommand

log = logging.getLogger(__name__)

C = TypeVar("C")
StepFn = Callable[[C], Awaitable[None]]


@dataclass(frozen=True)
class Cleanup:
    """An undo on a host: an idempotent agent command. ``resource_uuid`` is the resource whose
    operations it must not overtake (the retry runs in that resource's serial lane, and a guard
    checks there that it is still wanted)."""

    command: HostCommand
    resource_uuid: str


CleanupFn = Callable[[C], Sequence[Cleanup]]


class Garbage(Protocol):
    async def clean(self, cleanups: Sequence[Cleanup], origin: str) -> list[str]:
        """Send each cleanup; those that fail are recorded for retry: their record uuids."""
        ...


@dataclass(frozen=True)
class Flow(Generic[C]):
    """A step. ``rollback`` undoes it in ringstack, ``cleanup`` on hosts (see the module).
    ``undo_failed``: the undo also runs when this very step fails (or is cancelled, or times out)
    half-way, e.g. a command sent to an agent whose effect may have happened even though no answer
    came; such an undo must be safe when the step did nothing."""

    name: str
    run: StepFn[C]
    rollback: StepFn[C] | None = None
    cleanup: CleanupFn[C] | None = None
    undo_failed: bool = False


@dataclass
class FlowOutcome:
    """What happened, for the error's details and for tests."""

    completed: list[str] = field(default_factory=list)
    rolled_back: list[str] = field(default_factory=list)
    rollback_failures: list[dict[str, str]] = field(default_factory=list)
    cleanups_pending: list[str] = field(default_factory=list)  # garbage records, retried until done
    failed_step: str | None = None
    abandoned: list[str] = field(default_factory=list)  # not rolled back: ownership was lost


class FlowChain(Generic[C]):
    def __init__(
        self,
        name: str,
        flows: Sequence[Flow[C]],
        *,
        garbage: Garbage | None = None,
        rollback_timeout: float = 60.0,
    ) -> None:
        if garbage is None and any(flow.cleanup is not None for flow in flows):
            raise TypeError(f"{name}: a chain with cleanups on hosts needs a garbage collector")
        self.name = name
        self.flows = list(flows)
        self.garbage = garbage
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
            if flow.rollback is None and flow.cleanup is None:
                continue
            if lost or ownership_lost():
                lost = True
                self.outcome.abandoned.append(flow.name)
                continue
            try:
                # Rollback must run even after the deadline: it has a budget of its own.
                await asyncio.wait_for(self._undo(flow, ctx), self.rollback_timeout)
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

    async def _undo(self, flow: Flow[C], ctx: C) -> None:
        if flow.rollback is not None:
            await flow.rollback(ctx)
        if flow.cleanup is not None:
            assert self.garbage is not None
            pending = await self.garbage.clean(flow.cleanup(ctx), f"{self.name}/{flow.name}")
            self.outcome.cleanups_pending.extend(pending)

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
        if self.outcome.cleanups_pending:
            details["cleanupsPending"] = list(self.outcome.cleanups_pending)
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
