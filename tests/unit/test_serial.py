"""Per-resource serial queues: one at a time per key, FIFO, bounded, deadline-aware."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest

from bus.errors import RingstackError, Sys
from mgmt.core.serial import SerialQueues

SAFETY = 5.0  # only reached when a test is about to fail (a deadlock); never waited for on success


async def settle(rounds: int = 10) -> None:
    """Let every ready task run a few steps (no wall-clock wait)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


class Gate:
    """An operation that signals when it starts and finishes only when released."""

    def __init__(self, events: list[str] | None = None, label: str = "gate") -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.events = events
        self.label = label

    async def __call__(self) -> str:
        if self.events is not None:
            self.events.append(f"start {self.label}")
        self.started.set()
        await self.release.wait()
        if self.events is not None:
            self.events.append(f"end {self.label}")
        return self.label


def recorder(events: list[str], label: str, yields: int = 3) -> Callable[[], Awaitable[str]]:
    async def op() -> str:
        events.append(f"start {label}")
        for _ in range(yields):  # give any other operation on the key a chance to (wrongly) start
            await asyncio.sleep(0)
        events.append(f"end {label}")
        return label

    return op


async def test_same_key_runs_one_at_a_time_in_arrival_order() -> None:
    q = SerialQueues()
    events: list[str] = []
    first = Gate(events, "0")
    tasks = [asyncio.create_task(q.run("vm-1", first))]
    await first.started.wait()
    tasks += [asyncio.create_task(q.run("vm-1", recorder(events, str(i)))) for i in range(1, 10)]
    await settle()
    # All the others are queued behind the first; none has started.
    assert events == ["start 0"]
    assert q.depth("vm-1") == 10
    first.release.set()
    results = await asyncio.wait_for(asyncio.gather(*tasks), SAFETY)
    assert results == [str(i) for i in range(10)]
    assert events == [e for i in range(10) for e in (f"start {i}", f"end {i}")]


async def test_same_key_without_a_blocker_still_serialises() -> None:
    q = SerialQueues()
    events: list[str] = []
    tasks = [asyncio.create_task(q.run("k", recorder(events, str(i), yields=5))) for i in range(20)]
    await asyncio.wait_for(asyncio.gather(*tasks), SAFETY)
    assert events == [e for i in range(20) for e in (f"start {i}", f"end {i}")]


async def test_same_key_with_deadlines_keeps_arrival_order() -> None:
    q = SerialQueues()
    events: list[str] = []
    first = Gate(events, "0")
    tasks = [asyncio.create_task(q.run("k", first, deadline=time.time() + 60))]
    await first.started.wait()
    tasks += [
        asyncio.create_task(q.run("k", recorder(events, str(i)), deadline=time.time() + 60))
        for i in range(1, 6)
    ]
    await settle()
    first.release.set()
    await asyncio.wait_for(asyncio.gather(*tasks), SAFETY)
    assert events == [e for i in range(6) for e in (f"start {i}", f"end {i}")]


async def test_mixed_deadline_and_no_deadline_keep_arrival_order() -> None:
    """Arrival order must not depend on whether a request carries a deadline: an operation queued with a
    deadline must not be overtaken by one that arrived after it without a deadline."""
    q = SerialQueues()
    events: list[str] = []
    first = Gate(events, "A")
    holder = asyncio.create_task(q.run("k", first))
    await first.started.wait()
    with_deadline = asyncio.create_task(q.run("k", recorder(events, "X"), deadline=time.time() + 60))
    without_deadline = asyncio.create_task(q.run("k", recorder(events, "Z")))
    await settle()
    first.release.set()
    await asyncio.wait_for(asyncio.gather(holder, with_deadline, without_deadline), SAFETY)
    assert [e for e in events if e.startswith("start")] == ["start A", "start X", "start Z"]


async def test_mixed_deadline_order_on_an_idle_lane() -> None:
    """The first arrival on an idle lane runs first, deadline or not."""
    q = SerialQueues()
    events: list[str] = []
    with_deadline = asyncio.create_task(q.run("k", recorder(events, "X"), deadline=time.time() + 60))
    without_deadline = asyncio.create_task(q.run("k", recorder(events, "Z")))
    await asyncio.wait_for(asyncio.gather(with_deadline, without_deadline), SAFETY)
    assert events == ["start X", "end X", "start Z", "end Z"]


async def test_different_keys_run_concurrently() -> None:
    q = SerialQueues()
    a_started = asyncio.Event()
    b_started = asyncio.Event()

    async def op_a() -> str:
        a_started.set()
        await b_started.wait()  # only possible if b runs while a is still running
        return "a"

    async def op_b() -> str:
        b_started.set()
        await a_started.wait()
        return "b"

    results = await asyncio.wait_for(asyncio.gather(q.run("vm-a", op_a), q.run("vm-b", op_b)), SAFETY)
    assert results == ["a", "b"]
    assert q.depths() == {}


async def test_many_keys_all_overlap() -> None:
    q = SerialQueues()
    n = 8
    started = [asyncio.Event() for _ in range(n)]

    def op(i: int) -> Callable[[], Awaitable[int]]:
        async def run() -> int:
            started[i].set()
            for event in started:
                await event.wait()  # every key's operation is running at once
            return i

        return run

    results = await asyncio.wait_for(asyncio.gather(*(q.run(f"k{i}", op(i)) for i in range(n))), SAFETY)
    assert results == list(range(n))


async def test_full_lane_answers_busy_at_once() -> None:
    q = SerialQueues(limit_per_key=2)
    gate = Gate()
    running = asyncio.create_task(q.run("k", gate))
    await gate.started.wait()
    queued_ran = asyncio.Event()

    async def queued_op() -> str:
        queued_ran.set()
        return "queued"

    queued = asyncio.create_task(q.run("k", queued_op))
    await settle()
    assert q.depth("k") == 2
    called = False

    async def refused() -> None:
        nonlocal called
        called = True

    with pytest.raises(RingstackError) as info:
        # No await inside run() happens before the check, so this answers without queueing.
        await q.run("k", refused)
    assert info.value.code == Sys.BUSY
    assert info.value.details == {"key": "k", "depth": 2}
    assert not called
    assert q.depth("k") == 2
    # Another key is not affected by this lane being full.
    assert await q.run("other", queued_op) == "queued"
    gate.release.set()
    assert await asyncio.wait_for(running, SAFETY) == "gate"
    assert await asyncio.wait_for(queued, SAFETY) == "queued"
    # Once drained the lane takes work again.
    assert await q.run("k", queued_op) == "queued"
    assert q.depths() == {}


async def test_busy_answer_does_not_suspend() -> None:
    q = SerialQueues(limit_per_key=1)
    gate = Gate()
    running = asyncio.create_task(q.run("k", gate))
    await gate.started.wait()
    coro = q.run("k", gate)
    # Driving the coroutine one step raises at once: it never waits in the queue.
    with pytest.raises(RingstackError) as info:
        coro.send(None)
    assert info.value.code == Sys.BUSY
    gate.release.set()
    await asyncio.wait_for(running, SAFETY)


async def test_depths_observable_while_queued_and_lanes_removed_when_idle() -> None:
    q = SerialQueues()
    assert q.depths() == {}
    assert q.total == 0
    assert q.depth("a") == 0
    gate_a = Gate(label="a")
    gate_b = Gate(label="b")
    tasks = [asyncio.create_task(q.run("a", gate_a)), asyncio.create_task(q.run("b", gate_b))]
    await gate_a.started.wait()
    await gate_b.started.wait()
    tasks += [asyncio.create_task(q.run("a", recorder([], f"a{i}"))) for i in range(2)]
    await settle()
    assert q.depth("a") == 3
    assert q.depth("b") == 1
    assert q.depth("missing") == 0
    assert q.depths() == {"a": 3, "b": 1}
    assert q.total == 4
    gate_b.release.set()
    await asyncio.wait_for(tasks[1], SAFETY)
    assert q.depths() == {"a": 3}
    assert q.total == 3
    gate_a.release.set()
    await asyncio.wait_for(asyncio.gather(*tasks), SAFETY)
    assert q.depths() == {}
    assert q.total == 0
    assert q.depth("a") == 0


async def test_deadline_passing_while_queued_times_out_without_running() -> None:
    q = SerialQueues()
    gate = Gate()
    holder = asyncio.create_task(q.run("k", gate))
    await gate.started.wait()
    ran = False

    async def late() -> None:
        nonlocal ran
        ran = True

    with pytest.raises(RingstackError) as info:
        await asyncio.wait_for(q.run("k", late, deadline=time.time() + 0.05), SAFETY)
    assert info.value.code == Sys.TIMEOUT
    assert "k" in info.value.message
    assert not ran
    assert q.depth("k") == 1  # only the holder is left
    # The timed-out waiter does not jam the lane.
    follower = asyncio.create_task(q.run("k", recorder([], "next")))
    await settle()
    gate.release.set()
    assert await asyncio.wait_for(follower, SAFETY) == "next"
    await holder
    assert not ran
    assert q.depths() == {}


async def test_deadline_already_past_when_queued_times_out_without_running() -> None:
    q = SerialQueues()
    gate = Gate()
    holder = asyncio.create_task(q.run("k", gate))
    await gate.started.wait()
    ran = False

    async def late() -> None:
        nonlocal ran
        ran = True

    with pytest.raises(RingstackError) as info:
        await asyncio.wait_for(q.run("k", late, deadline=time.time() - 1), SAFETY)
    assert info.value.code == Sys.TIMEOUT
    assert not ran
    gate.release.set()
    await asyncio.wait_for(holder, SAFETY)
    assert q.depths() == {}


async def test_deadline_bounds_the_wait_not_the_run() -> None:
    q = SerialQueues()
    inner = Gate()
    task = asyncio.create_task(q.run("k", inner, deadline=time.time() + 0.05))
    await inner.started.wait()
    # The deadline passes while the operation runs; it is not interrupted.
    await asyncio.wait_for(_until_past(time.time() + 0.06), SAFETY)
    assert not task.done()
    inner.release.set()
    assert await asyncio.wait_for(task, SAFETY) == "gate"


async def _until_past(moment: float) -> None:
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    loop.call_later(max(0.0, moment - time.time()), done.set_result, None)
    await done


async def test_exception_in_one_operation_does_not_block_the_next() -> None:
    q = SerialQueues()
    events: list[str] = []
    gate = Gate(events, "first")

    async def boom() -> None:
        events.append("boom")
        raise ValueError("boom")

    async def fail_coded() -> None:
        events.append("coded")
        raise RingstackError("ZONE.IN_USE", "in use")

    first = asyncio.create_task(q.run("k", gate))
    await gate.started.wait()
    failing = asyncio.create_task(q.run("k", boom))
    coded = asyncio.create_task(q.run("k", fail_coded))
    last = asyncio.create_task(q.run("k", recorder(events, "last")))
    await settle()
    gate.release.set()
    with pytest.raises(ValueError, match="boom"):
        await asyncio.wait_for(failing, SAFETY)
    with pytest.raises(RingstackError) as info:
        await asyncio.wait_for(coded, SAFETY)
    assert info.value.code == "ZONE.IN_USE"
    assert await asyncio.wait_for(last, SAFETY) == "last"
    await first
    assert events == ["start first", "end first", "boom", "coded", "start last", "end last"]
    assert q.depths() == {}


async def test_cancelled_waiter_leaves_the_queue() -> None:
    q = SerialQueues()
    gate = Gate()
    holder = asyncio.create_task(q.run("k", gate))
    await gate.started.wait()
    ran = False

    async def never() -> None:
        nonlocal ran
        ran = True

    waiter = asyncio.create_task(q.run("k", never))
    await settle()
    assert q.depth("k") == 2
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert q.depth("k") == 1
    follower = asyncio.create_task(q.run("k", recorder([], "after")))
    await settle()
    gate.release.set()
    assert await asyncio.wait_for(follower, SAFETY) == "after"
    await holder
    assert not ran
    assert q.depths() == {}
