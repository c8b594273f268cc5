"""Calling agents from the management side, in the protocol the agent kind speaks (the
hypervisor's ``schema.agent.HypervisorAgent`` unless told otherwise; ``schema.agent_base``)."""

from __future__ import annotations

import logging
from typing import Any, TypeVar

from bus.aio import AsyncBus
from bus.errors import RingstackError, Sys
from schema.agent import HypervisorAgent
from schema.agent_base import AgentErrors, AgentInterface, AgentReply, CommandSpec, HostCommand, commands_of
from schema.api.base import parse_wire

log = logging.getLogger(__name__)

R = TypeVar("R", bound=AgentReply)


class AgentClient:
    def __init__(
        self,
        bus: AsyncBus,
        default_timeout: float = 60.0,
        *,
        protocol: type[AgentInterface] = HypervisorAgent,
    ) -> None:
        self.bus = bus
        self.default_timeout = default_timeout
        self.version = protocol.VERSION
        self._specs: dict[type[HostCommand], CommandSpec] = {
            spec.request: spec for spec in commands_of(protocol).values()
        }

    async def send(self, command: HostCommand, *, timeout: float | None = None) -> AgentReply:
        """``call`` for a command whose reply's content does not matter (a cleanup's)."""
        spec = self._specs.get(type(command))
        if spec is None:
            raise TypeError(f"{type(command).__name__} is not a command of this protocol")
        return await self.call(command, spec.reply, timeout=timeout)

    async def call(self, command: HostCommand, reply: type[R], *, timeout: float | None = None) -> R:
        """Send ``command`` to its host's agent and return the checked reply.

        The command goes out stamped with this side's protocol version and the reply must carry
        the same (``AGENT.PROTOCOL_MISMATCH`` otherwise): an agent upgraded or downgraded behind
        our back is noticed at its next command, whatever the command."""
        spec = self._specs.get(type(command))
        if spec is None or spec.reply is not reply:
            raise TypeError(f"{type(command).__name__} -> {reply.__name__} is not a protocol command")
        queue = self.bus.topology.agent_queue(command.host_uuid).name
        body = await self.bus.call(
            queue,
            spec.name,
            command.model_copy(update={"protocol_version": self.version}).to_wire(),
            resource_uuid=command.host_uuid,
            timeout=self.default_timeout if timeout is None else timeout,
        )
        try:
            answer = parse_wire(reply, body)
        except RingstackError as exc:
            raise RingstackError(
                Sys.MALFORMED_MESSAGE,
                f"the agent of host {command.host_uuid} sent a bad {spec.name} reply",
                details=exc.details,
            ) from None
        if answer.protocol_version != self.version:
            raise RingstackError(
                AgentErrors.PROTOCOL_MISMATCH,
                f"the agent of host {command.host_uuid} answered {spec.name} in protocol"
                f" {answer.protocol_version}, not {self.version}",
                details={"agentProtocolVersion": answer.protocol_version},
            )
        if spec.mutating and not answer.changed:
            log.info("%s on host %s: nothing to change", spec.name, command.host_uuid)
        return answer


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
