"""Flow chains: run in order, roll back completed steps in reverse on failure or deadline."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bus.errors import RingstackError, Sys
from mgmt.core.flow import Flow, FlowChain

SAFETY = 5.0


@dataclass
class Ctx:
    log: list[str] = field(default_factory=list)
    values: dict[str, int] = field(default_factory=dict)


def step(
    name: str,
    *,
    fail: BaseException | None = None,
    rollback: bool = True,
    rollback_fails: bool = False,
) -> Flow[Ctx]:
    async def run(ctx: Ctx) -> None:
        ctx.log.append(f"run {name}")
        await asyncio.sleep(0)
        if fail is not None:
            raise fail
        ctx.values[name] = len(ctx.log)

    async def undo(ctx: Ctx) -> None:
        ctx.log.append(f"rollback {name}")
        await asyncio.sleep(0)
        if rollback_fails:
            raise RingstackError("HOST.UNREACHABLE", f"cannot undo {name}")
        ctx.values.pop(name, None)

    return Flow(name, run, undo if rollback else None)


def names(n: int) -> list[str]:
    return [f"s{i}" for i in range(n)]


async def test_successful_chain_runs_every_step_in_order_and_returns_ctx() -> None:
    ctx = Ctx()
    chain = FlowChain("create-vm", [step(n) for n in names(5)])
    result = await chain.run(ctx)
    assert result is ctx
    assert ctx.log == [f"run {n}" for n in names(5)]
    assert list(ctx.values) == names(5)
    assert chain.outcome.completed == names(5)
    assert chain.outcome.rolled_back == []
    assert chain.outcome.rollback_failures == []
    assert chain.outcome.failed_step is None


async def test_empty_chain_returns_ctx() -> None:
    ctx = Ctx()
    assert await FlowChain[Ctx]("nothing", []).run(ctx) is ctx
    assert ctx.log == []


async def test_successful_chain_with_a_deadline() -> None:
    ctx = Ctx()
    chain = FlowChain("c", [step(n) for n in names(3)])
    assert await chain.run(ctx, deadline=time.time() + 60) is ctx
    assert chain.outcome.completed == names(3)


@pytest.mark.parametrize(("n", "k"), [(n, k) for n in range(1, 7) for k in range(n)], ids=str)
async def test_failure_at_k_rolls_back_completed_steps_in_reverse(n: int, k: int) -> None:
    ctx = Ctx()
    original = RingstackError("STEP.FAILED", f"step s{k} broke", details={"why": "disk full"})
    flows = [step(name, fail=original if i == k else None) for i, name in enumerate(names(n))]
    chain = FlowChain("chain", flows)
    with pytest.raises(RingstackError) as info:
        await chain.run(ctx)
    err = info.value
    completed = names(n)[:k]
    expected_rollback = list(reversed(completed))
    assert ctx.log == [f"run {s}" for s in [*completed, f"s{k}"]] + [
        f"rollback {s}" for s in expected_rollback
    ]
    # Later steps never ran; the failed step is not rolled back.
    assert f"rollback s{k}" not in ctx.log
    assert ctx.values == {}
    assert err.code == "STEP.FAILED"
    assert err.message == f"step s{k} broke"
    assert err.details["failedStep"] == f"s{k}"
    assert err.details["rolledBack"] == expected_rollback
    assert err.details["chain"] == "chain"
    assert err.details["why"] == "disk full"  # the original details are kept
    assert "rollbackFailures" not in err.details
    assert err.__cause__ is original
    assert chain.outcome.failed_step == f"s{k}"
    assert chain.outcome.completed == completed
    assert chain.outcome.rolled_back == expected_rollback


async def test_failure_keeps_the_original_errors_cause() -> None:
    root = RingstackError("DB.UNAVAILABLE", "db down")
    original = RingstackError("STEP.FAILED", "broke", cause=root)
    chain = FlowChain("c", [step("a"), step("b", fail=original)])
    with pytest.raises(RingstackError) as info:
        await chain.run(Ctx())
    assert info.value.cause is root


async def test_failing_rollback_is_recorded_and_other_rollbacks_still_run() -> None:
    ctx = Ctx()
    flows = [
        step("a"),
        step("b", rollback_fails=True),
        step("c"),
        step("d", fail=RingstackError("STEP.FAILED", "d broke")),
    ]
    chain = FlowChain("c", flows)
    with pytest.raises(RingstackError) as info:
        await chain.run(ctx)
    err = info.value
    assert ctx.log == ["run a", "run b", "run c", "run d", "rollback c", "rollback b", "rollback a"]
    assert err.code == "STEP.FAILED"
    assert err.details["failedStep"] == "d"
    assert err.details["rolledBack"] == ["c", "a"]
    assert err.details["rollbackFailures"] == [{"step": "b", "error": "HOST.UNREACHABLE: cannot undo b"}]


async def test_rollback_raising_a_plain_exception_is_described() -> None:
    async def run(ctx: Ctx) -> None:
        ctx.log.append("run a")

    async def bad_undo(ctx: Ctx) -> None:
        raise OSError("disk gone")

    chain = FlowChain("c", [Flow("a", run, bad_undo), step("b", fail=RingstackError("X.Y", "b"))])
    with pytest.raises(RingstackError) as info:
        await chain.run(Ctx())
    assert info.value.details["rollbackFailures"] == [{"step": "a", "error": "OSError: disk gone"}]
    assert info.value.details["rolledBack"] == []


async def test_rollback_that_hangs_times_out_and_the_rest_still_run() -> None:
    never = asyncio.Event()

    async def hang(ctx: Ctx) -> None:
        ctx.log.append("rollback b")
        await never.wait()

    async def run(ctx: Ctx) -> None:
        ctx.log.append("run b")

    flows = [step("a"), Flow("b", run, hang), step("c", fail=RingstackError("X.Y", "c broke"))]
    chain = FlowChain("c", flows, rollback_timeout=0.02)
    ctx = Ctx()
    with pytest.raises(RingstackError) as info:
        await asyncio.wait_for(chain.run(ctx), SAFETY)
    assert ctx.log == ["run a", "run b", "run c", "rollback b", "rollback a"]
    assert info.value.details["rolledBack"] == ["a"]
    assert info.value.details["rollbackFailures"] == [{"step": "b", "error": "rollback timed out"}]


async def test_steps_without_rollback_are_skipped() -> None:
    ctx = Ctx()
    flows = [step("a"), step("b", rollback=False), step("c"), step("d", fail=RingstackError("X.Y", "d"))]
    chain = FlowChain("c", flows)
    with pytest.raises(RingstackError) as info:
        await chain.run(ctx)
    assert ctx.log == ["run a", "run b", "run c", "run d", "rollback c", "rollback a"]
    assert info.value.details["rolledBack"] == ["c", "a"]
    assert "rollbackFailures" not in info.value.details


async def test_step_exceeding_the_deadline_times_out_and_rolls_back() -> None:
    ctx = Ctx()
    cancelled = asyncio.Event()
    never = asyncio.Event()

    async def slow(c: Ctx) -> None:
        c.log.append("run slow")
        try:
            await never.wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def undo_slow(c: Ctx) -> None:
        c.log.append("rollback slow")

    flows = [step("a"), step("b"), Flow("slow", slow, undo_slow), step("after")]
    chain = FlowChain("c", flows)
    with pytest.raises(RingstackError) as info:
        await asyncio.wait_for(chain.run(ctx, deadline=time.time() + 0.05), SAFETY)
    err = info.value
    assert err.code == Sys.TIMEOUT
    assert "c/slow" in err.message
    assert err.details["failedStep"] == "slow"
    assert err.details["rolledBack"] == ["b", "a"]
    assert ctx.log == ["run a", "run b", "run slow", "rollback b", "rollback a"]
    assert cancelled.is_set()  # the slow step was stopped, not left running


async def test_a_steps_own_timeout_error_is_not_mistaken_for_the_deadline() -> None:
    async def own_timeout(c: Ctx) -> None:
        c.log.append("run own")
        raise TimeoutError("the hypervisor did not answer")

    ctx = Ctx()
    chain = FlowChain("c", [step("a"), Flow("own", own_timeout)])
    with pytest.raises(RingstackError) as info:
        await chain.run(ctx, deadline=time.time() + 3600)
    assert info.value.code == Sys.INTERNAL
    assert isinstance(info.value.__cause__, TimeoutError)
    assert info.value.details["failedStep"] == "own"
    assert ctx.log == ["run a", "run own", "rollback a"]


async def test_deadline_already_passed_does_not_start_the_step_and_rolls_back() -> None:
    ctx = Ctx()
    chain = FlowChain("c", [step("a"), step("b")])
    with pytest.raises(RingstackError) as info:
        await chain.run(ctx, deadline=time.time() - 1)
    assert info.value.code == Sys.TIMEOUT
    assert "did not start" in info.value.message
    assert info.value.details["failedStep"] == "a"
    assert info.value.details["rolledBack"] == []
    assert ctx.log == []  # the step's coroutine was closed, never run


async def test_non_ringstack_exception_becomes_internal(caplog: pytest.LogCaptureFixture) -> None:
    ctx = Ctx()
    boom = ValueError("secret internals")
    chain = FlowChain("c", [step("a"), step("b", fail=boom), step("c")])
    with caplog.at_level(logging.ERROR, logger="mgmt.core.flow"), pytest.raises(RingstackError) as info:
        await chain.run(ctx)
    err = info.value
    assert err.code == Sys.INTERNAL
    assert "secret internals" not in err.message  # no internals on the wire
    assert "c/b" in err.message
    assert err.details == {"chain": "c", "failedStep": "b", "rolledBack": ["a"]}
    assert err.cause is None
    assert err.__cause__ is boom
    assert ctx.log == ["run a", "run b", "rollback a"]
    assert any(record.exc_info and record.exc_info[1] is boom for record in caplog.records)


async def test_cancellation_rolls_back_and_propagates() -> None:
    ctx = Ctx()
    started = asyncio.Event()

    async def wait_forever(c: Ctx) -> None:
        c.log.append("run wait")
        started.set()
        await asyncio.Event().wait()

    chain = FlowChain("c", [step("a"), Flow("wait", wait_forever), step("b")])
    task = asyncio.create_task(chain.run(ctx))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert ctx.log == ["run a", "run wait", "rollback a"]
    assert chain.outcome.failed_step == "wait"


def make_step(
    name: str, log: list[str], *, fails: bool, has_rollback: bool, rollback_fails: bool
) -> Flow[None]:
    async def run(_: None) -> None:
        log.append(f"run {name}")
        if fails:
            raise RingstackError("STEP.FAILED", name)

    async def undo(_: None) -> None:
        log.append(f"rollback {name}")
        if rollback_fails:
            raise RuntimeError(f"undo {name}")

    rollback: Callable[[None], Awaitable[None]] | None = undo if has_rollback else None
    return Flow(name, run, rollback)


@st.composite
def chains(draw: st.DrawFn) -> tuple[int, int, list[bool], list[bool]]:
    n = draw(st.integers(min_value=1, max_value=12))
    k = draw(st.integers(min_value=0, max_value=n - 1))
    has_rollback = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    rollback_fails = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    return n, k, has_rollback, rollback_fails


@settings(max_examples=200, deadline=None)
@given(chains())
def test_rollback_property(spec: tuple[int, int, list[bool], list[bool]]) -> None:
    n, k, has_rollback, rollback_fails = spec
    log: list[str] = []
    flows = [
        make_step(f"s{i}", log, fails=i == k, has_rollback=has_rollback[i], rollback_fails=rollback_fails[i])
        for i in range(n)
    ]
    chain = FlowChain("prop", flows)
    with pytest.raises(RingstackError) as info:
        asyncio.run(chain.run(None))
    err = info.value
    undone = [i for i in reversed(range(k)) if has_rollback[i]]
    assert log == [f"run s{i}" for i in range(k + 1)] + [f"rollback s{i}" for i in undone]
    assert err.code == "STEP.FAILED"
    assert err.details["failedStep"] == f"s{k}"
    assert err.details["rolledBack"] == [f"s{i}" for i in undone if not rollback_fails[i]]
    failures = [{"step": f"s{i}", "error": f"RuntimeError: undo s{i}"} for i in undone if rollback_fails[i]]
    if failures:
        assert err.details["rollbackFailures"] == failures
    else:
        assert "rollbackFailures" not in err.details


async def test_a_step_marked_undo_failed_is_rolled_back_when_it_fails_itself():
    log: list[str] = []

    async def ok(ctx):
        log.append("run a")

    async def half_done(ctx):
        log.append("run b")
        raise RingstackError("TEST.HALF", "sent, no answer")

    def undo(name):
        async def fn(ctx):
            log.append(f"undo {name}")

        return fn

    chain = FlowChain("t", [Flow("a", ok, undo("a")), Flow("b", half_done, undo("b"), undo_failed=True)])
    with pytest.raises(RingstackError) as err:
        await chain.run(object())
    assert log == ["run a", "run b", "undo b", "undo a"]
    assert err.value.details["rolledBack"] == ["b", "a"]
