"""Calling hypervisor agents from the management side, in the protocol of ``schema.agent``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from bus.aio import AsyncBus
from bus.errors import RingstackError, Sys
from schema.agent import COMMANDS, HostCommand
from schema.api.base import WireModel, parse_wire

R = TypeVar("R", bound=WireModel)

Commands = Mapping[str, tuple[type[HostCommand], type[WireModel]]]


class AgentClient:
    """Calls one agent protocol: the hypervisor agents' by default, or another table of the same
    shape (``schema.vrouter.COMMANDS`` for virtual routers)."""

    def __init__(
        self, bus: AsyncBus, default_timeout: float = 60.0, *, commands: Commands = COMMANDS
    ) -> None:
        self.bus = bus
        self.default_timeout = default_timeout
        self.commands = commands
        self._names = {command: name for name, (command, _) in commands.items()}

    async def call(self, command: HostCommand, reply: type[R], *, timeout: float | None = None) -> R:
        """Send ``command`` to its host's agent and return the checked reply."""
        name = self._names.get(type(command))
        if name is None or self.commands[name][1] is not reply:
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


async def sync_vrouter(agents: AgentClient, vr_uuid: str, state: Any, *, timeout: float | None = None) -> Any:
    """Send a virtual router its whole desired state (``schema.vrouter.VrState``), in as many
    ``vrouter.sync`` parts as the bus's message limit needs; the reply of the last part."""
    import uuid

    from schema.vrouter import ChangeReply, SyncCommand, split_state

    parts = split_state(state)
    sync_id = uuid.uuid4().hex if len(parts) > 1 else None
    reply: ChangeReply | None = None
    for i, part in enumerate(parts):
        command = SyncCommand(host_uuid=vr_uuid, state=part, sync_id=sync_id, part=i, parts=len(parts))
        reply = await agents.call(command, ChangeReply, timeout=timeout)
    assert reply is not None and reply.complete
    return reply
