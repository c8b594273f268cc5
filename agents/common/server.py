"""Serving the agent protocol (``schema.agent``) for one or more hosts.

An ``AgentServer`` consumes each host's queue, validates every command against the protocol,
refuses commands meant for another host, and calls the host's ``HostAgent`` method named after the
command (``agent.vm.start`` -> ``vm_start``). Replies go out through the replies exchange, the only
place (besides its reports) an agent's broker user may publish to.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from bus.aio import AsyncBus, Consumer
from bus.envelope import Envelope
from bus.errors import RingstackError, Sys
from schema.agent import COMMANDS, AgentErrors, HostCommand, report_routing_key
from schema.api.base import WireModel, check_input, parse_wire

log = logging.getLogger(__name__)


class HostAgent(Protocol):
    """One host's implementation: a coroutine per command, named as ``method_name`` says."""

    host_uuid: str


def method_name(command: str) -> str:
    return command.removeprefix("agent.").replace(".", "_")


class AgentServer:
    def __init__(self, bus: AsyncBus, *, prefetch: int = 16) -> None:
        self.bus = bus
        self.prefetch = prefetch
        self._hosts: dict[str, tuple[HostAgent, Consumer]] = {}

    @property
    def hosts(self) -> dict[str, HostAgent]:
        return {uuid: agent for uuid, (agent, _) in self._hosts.items()}

    async def serve(self, agent: HostAgent) -> None:
        if agent.host_uuid in self._hosts:
            return

        async def handle(env: Envelope) -> dict[str, Any]:
            return await self.handle(agent, env)

        spec = self.bus.topology.agent_queue(agent.host_uuid)
        consumer = self.bus.consume(spec, handle, prefetch=self.prefetch)
        self._hosts[agent.host_uuid] = (agent, consumer)
        await self.bus.start_consumer(consumer)

    async def stop_serving(self, host_uuid: str) -> None:
        entry = self._hosts.pop(host_uuid, None)
        if entry is not None:
            await self.bus.cancel(entry[1])

    async def handle(self, agent: HostAgent, env: Envelope) -> dict[str, Any]:
        entry = COMMANDS.get(env.name)
        if entry is None:
            raise RingstackError(Sys.UNKNOWN_MESSAGE, f"the agent does not know {env.name!r}")
        command_model, reply_model = entry
        # Bounded like client input (no NUL, no 65-bit integers, no deep nesting): whoever can
        # publish to the queue, nothing reaches libvirt or the disk that they would refuse with
        # an exception rather than an answer.
        check_input(env.body)
        command: HostCommand = parse_wire(command_model, env.body)
        if command.host_uuid != agent.host_uuid:
            raise RingstackError(
                AgentErrors.WRONG_HOST,
                f"this agent is host {agent.host_uuid}, not {command.host_uuid}",
                details={"agentHostUuid": agent.host_uuid},
            )
        method = getattr(agent, method_name(env.name), None)
        if method is None:
            raise RingstackError(Sys.UNKNOWN_MESSAGE, f"this agent does not implement {env.name}")
        reply: WireModel = await method(command)
        if not isinstance(reply, reply_model):
            raise RingstackError(Sys.INTERNAL, f"{env.name} produced a {type(reply).__name__}")
        return reply.to_wire()

    async def report(self, host_uuid: str, report: str, body: WireModel) -> None:
        await self.bus.publish_event(
            report_routing_key(host_uuid, report), f"agent.report.{report}", body.to_wire()
        )
