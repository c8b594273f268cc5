"""Faults injected into simulated agents (hosts and virtual routers), per command: latency,
failing the Nth call or every call, never answering, exiting the whole process."""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Protocol

from pydantic import Field

from bus.errors import RingstackError
from schema.agent import AgentErrors
from schema.api.base import WireModel

log = logging.getLogger("agents.simulator.simulator")


class Fault(WireModel):
    """What to do to one command on one host."""

    latency: float = Field(default=0.0, ge=0, le=600)
    fail_nth: list[int] = Field(default_factory=list, description="fail these call numbers (1-based)")
    fail_always: bool = False
    hang: bool = False  # never answer
    crash_nth: int | None = Field(default=None, ge=1, description="exit the process on this call")


class FaultTarget(Protocol):
    host_uuid: str
    faults: dict[str, Fault]
    calls: dict[str, int]


async def enter_faults(target: FaultTarget, command: str) -> None:
    """Count the call and apply the fault configured for it (or for every command, ``*``)."""
    n = target.calls[command] = target.calls.get(command, 0) + 1
    fault = target.faults.get(command) or target.faults.get("*")
    if fault is None:
        return
    if fault.crash_nth is not None and n == fault.crash_nth:
        log.error("simulator: crashing on %s call %d of host %s, as configured", command, n, target.host_uuid)
        os._exit(17)
    if fault.latency:
        await asyncio.sleep(fault.latency)
    if fault.hang:
        await asyncio.Event().wait()
    if fault.fail_always or n in fault.fail_nth:
        raise RingstackError(AgentErrors.INJECTED_FAILURE, f"injected failure of {command} call {n}")
