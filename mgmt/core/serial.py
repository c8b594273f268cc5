"""Per-resource serial queues: operations on one resource run one at a time, in arrival order;
different resources run concurrently.

This is ZStack's ``chainSubmit`` with sync level 1 (signature ``Vm-<uuid>``): together with ring
ownership it is what lets handlers read-modify-write a resource without locks in the database.
Each lane is bounded; a full lane answers ``SYS.BUSY`` at once rather than queueing unboundedly.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from bus.errors import RingstackError, Sys

T = TypeVar("T")


@dataclass(slots=True)
class _Lane:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    depth: int = 0  # running + waiting


class SerialQueues:
    def __init__(self, limit_per_key: int = 1000) -> None:
        self.limit_per_key = limit_per_key
        self._lanes: dict[str, _Lane] = {}

    async def run(self, key: str, fn: Callable[[], Awaitable[T]], *, deadline: float | None = None) -> T:
        """Run ``fn()`` after every earlier operation on ``key`` has finished.

        ``deadline`` (absolute Unix seconds) bounds the wait in the queue, not the run itself.
        """
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = _Lane()
        if lane.depth >= self.limit_per_key:
            raise RingstackError(
                Sys.BUSY,
                f"{lane.depth} operations are already queued on {key}; retry later",
                details={"key": key, "depth": lane.depth},
            )
        lane.depth += 1
        try:
            if deadline is None:
                await lane.lock.acquire()
            else:
                # asyncio.timeout, not wait_for: wait_for would call acquire() from a new task one
                # loop turn later, letting a later arrival overtake this one.
                loop = asyncio.get_running_loop()
                try:
                    async with asyncio.timeout_at(loop.time() + deadline - time.time()):
                        await lane.lock.acquire()
                except TimeoutError:
                    raise RingstackError(
                        Sys.TIMEOUT, f"the deadline passed while queued behind other operations on {key}"
                    ) from None
            try:
                return await fn()
            finally:
                lane.lock.release()
        finally:
            lane.depth -= 1
            if lane.depth == 0:
                del self._lanes[key]

    def depth(self, key: str) -> int:
        lane = self._lanes.get(key)
        return lane.depth if lane else 0

    def depths(self) -> dict[str, int]:
        return {key: lane.depth for key, lane in self._lanes.items()}

    @property
    def total(self) -> int:
        return sum(lane.depth for lane in self._lanes.values())
