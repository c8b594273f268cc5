"""A flow chain run by fenced work that lost its ownership leaves the rollback to the next owner.

Its undo steps act on agents, which check no fencing token: run by a stale owner they race the new
owner (who resumes the job and cleans up from the database's record), and once destroyed a VM that
the database, finished by the resumed job, says is Running.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from bus.errors import RingstackError, Sys
from mgmt.core.db import CURRENT_FENCE, Fence, ownership_lost
from mgmt.core.flow import Flow, FlowChain

PARTITION = 7


@contextmanager
def fenced(held: list[bool]) -> Iterator[None]:
    """Run as fenced work whose holder believes it holds the partition while ``held[0]``."""
    reset = CURRENT_FENCE.set(Fence("n" * 32, PARTITION, 3, held=lambda: held[0]))
    try:
        yield
    finally:
        CURRENT_FENCE.reset(reset)


def chain(
    log: list[str], fail: BaseException | None = None, lose: list[bool] | None = None
) -> FlowChain[None]:
    def step(name: str, failing: bool = False) -> Flow[None]:
        async def run(_: None) -> None:
            log.append(f"run {name}")
            if failing and lose is not None:
                lose[0] = False
            if failing and fail is not None:
                raise fail

        async def undo(_: None) -> None:
            log.append(f"undo {name}")

        return Flow(name, run, undo)

    return FlowChain("c", [step("a"), step("b"), step("c", failing=True)])


def not_owner(partition: int) -> RingstackError:
    return RingstackError(Sys.NOT_OWNER, "gone", details={"partition": partition})


async def test_without_a_fence_nothing_is_ever_lost():
    assert not ownership_lost()
    assert not ownership_lost(not_owner(PARTITION))


async def test_a_failure_while_the_ownership_holds_rolls_back():
    log: list[str] = []
    with fenced([True]), pytest.raises(RingstackError) as err:
        await chain(log, RingstackError("X.Y", "boom")).run(None)
    assert log == ["run a", "run b", "run c", "undo b", "undo a"]
    assert "leftToNextOwner" not in err.value.details


async def test_losing_the_partition_mid_flow_leaves_the_rollback_to_the_next_owner():
    log: list[str] = []
    held = [True]
    flow = chain(log, RingstackError("X.Y", "boom"), lose=held)
    with fenced(held), pytest.raises(RingstackError) as err:
        await flow.run(None)
    assert log == ["run a", "run b", "run c"]
    assert err.value.details["leftToNextOwner"] == ["b", "a"]
    assert flow.outcome.rolled_back == []
    # not a failure to record: the job runner leaves the job for the next owner to resume
    assert err.value.code == Sys.NOT_OWNER
    assert err.value.details["partition"] == PARTITION
    assert ownership_lost(err.value) is False  # outside the fenced work, nothing is lost ...
    with fenced([True]):
        assert ownership_lost(err.value)  # ... inside it, the error says so even if the lease came back


async def test_a_fenced_write_refused_for_this_partition_is_a_lost_ownership():
    log: list[str] = []
    with fenced([True]), pytest.raises(RingstackError) as err:
        await chain(log, not_owner(PARTITION)).run(None)
    assert err.value.code == Sys.NOT_OWNER
    assert log == ["run a", "run b", "run c"]


async def test_not_owner_of_another_partition_is_an_ordinary_failure():
    log: list[str] = []
    with fenced([True]), pytest.raises(RingstackError):
        await chain(log, not_owner(PARTITION + 1)).run(None)
    assert log[-2:] == ["undo b", "undo a"]


async def test_a_cancelled_job_rolls_back_unless_it_was_fenced():
    async def cancelled(held: list[bool]) -> list[str]:
        log: list[str] = []
        started = asyncio.Event()

        async def run(_: None) -> None:
            started.set()
            await asyncio.sleep(60)

        async def undo(_: None) -> None:
            log.append("undo")

        flow = FlowChain("c", [Flow("a", run, undo, undo_failed=True)])

        async def work() -> None:
            with fenced(held):
                await flow.run(None)

        task = asyncio.create_task(work())
        await started.wait()
        task.cancel()  # CancelJob (the ownership holds) or self-fencing (it does not)
        with pytest.raises(asyncio.CancelledError):
            await task
        return log

    assert await cancelled([True]) == ["undo"]
    assert await cancelled([False]) == []


async def test_ownership_lost_during_the_rollback_stops_it():
    log: list[str] = []
    held = [True]

    async def run(_: None) -> None:
        log.append("run")

    async def undo_b(_: None) -> None:
        log.append("undo b")
        held[0] = False  # the lease lapsed while undoing

    async def undo_a(_: None) -> None:
        log.append("undo a")

    async def fail(_: None) -> None:
        raise RingstackError("X.Y", "boom")

    flow = FlowChain("c", [Flow("a", run, undo_a), Flow("b", run, undo_b), Flow("c", fail)])
    with fenced(held), pytest.raises(RingstackError) as err:
        await flow.run(None)
    assert log == ["run", "run", "undo b"]
    assert err.value.details["leftToNextOwner"] == ["a"]
