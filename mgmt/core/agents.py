"""Calling hypervisor agents from the management side, in the protocol of ``schema.agent``."""

from __future__ import annotations

from typing import TypeVar

from bus.aio import AsyncBus
from bus.errors import RingstackError, Sys
from schema.agent import COMMANDS, HostCommand
from schema.api.base import WireModel, parse_wire

R = TypeVar("R", bound=WireModel)

_NAMES = {command: name for name, (command, _) in COMMANDS.items()}


class AgentClient:
    def __init__(self, bus: AsyncBus, default_timeout: float = 60.0) -> None:
        self.bus = bus
        self.default_timeout = default_timeout

    async def call(self, command: HostCommand, reply: type[R], *, timeout: float | None = None) -> R:
        """Send ``command`` to its host's agent and return the checked reply."""
        name = _NAMES.get(type(command))
        if name is None or COMMANDS[name][1] is not reply:
            raise TypeError(f"{type(command).__name__} -> {reply.__name__} is not a protocol command")
        queue = self.bus.topology.agent_queue(command.host_uuid).name
        body = await self.bus.call(
            queue,
            name,
            command.to_wire(),
            resource_uuid=command.host_uuid,
            timeout=self.default_timeout if timeout is None else timeout,
        )
        try:
            return parse_wire(reply, body)
        except RingstackError as exc:
            raise RingstackError(
                Sys.MALFORMED_MESSAGE,
                f"the agent of host {command.host_uuid} sent a bad {name} reply",
                details=exc.details,
            ) from None
