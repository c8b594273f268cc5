"""Serving an agent protocol (``schema.agent_base``) for one or more hosts.

An ``AgentServer`` consumes each host's queue, validates every command against the protocol the
agent implements (its ``AgentInterface``: the hypervisor's, the virtual router's), refuses commands
of another protocol version or meant for another host, and calls the interface method the command
is declared on. Replies carry the agent's protocol version and go out through the replies exchange,
the only place (besides its reports) an agent's broker user may publish to.
"""

from __future__ import annotations

import logging
from typing import Any

from bus.aio import AsyncBus, Consumer
from bus.envelope import Envelope
from bus.errors import RingstackError, Sys
from schema.agent_base import (
    AgentErrors,
    AgentInterface,
    AgentReply,
    commands_of,
    protocol_of,
    report_routing_key,
)
from schema.api.base import WireModel, check_input, parse_wire

log = logging.getLogger(__name__)


class AgentServer:
    def __init__(self, bus: AsyncBus, *, prefetch: int = 16) -> None:
        self.bus = bus
        self.prefetch = prefetch
        self._hosts: dict[str, tuple[AgentInterface, Consumer]] = {}

    @property
    def hosts(self) -> dict[str, AgentInterface]:
        return {uuid: agent for uuid, (agent, _) in self._hosts.items()}

    async def serve(self, agent: AgentInterface) -> None:
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

    async def handle(self, agent: AgentInterface, env: Envelope) -> dict[str, Any]:
        spec = commands_of(type(agent)).get(env.name)
        if spec is None:
            raise RingstackError(Sys.UNKNOWN_MESSAGE, f"the agent does not know {env.name!r}")
        # The version before the body: a body of another version says nothing this one can check.
        version = protocol_of(type(agent)).VERSION
        sent = env.body.get("protocolVersion")
        if sent != version:
            raise RingstackError(
                AgentErrors.PROTOCOL_MISMATCH,
                f"this agent speaks protocol {version}, not {sent}",
                details={"agentProtocolVersion": version},
            )
        # Bounded like client input (no NUL, no 65-bit integers, no deep nesting): whoever can
        # publish to the queue, nothing reaches libvirt or the disk that they would refuse with
        # an exception rather than an answer.
        check_input(env.body)
        command = parse_wire(spec.request, env.body)
        if command.host_uuid != agent.host_uuid:
            raise RingstackError(
                AgentErrors.WRONG_HOST,
                f"this agent is host {agent.host_uuid}, not {command.host_uuid}",
                details={"agentHostUuid": agent.host_uuid},
            )
        reply: AgentReply = await getattr(agent, spec.method)(command)
        if not isinstance(reply, spec.reply):
            raise RingstackError(Sys.INTERNAL, f"{env.name} produced a {type(reply).__name__}")
        reply.protocol_version = version
        return reply.to_wire()

    async def report(self, host_uuid: str, report: str, body: WireModel) -> None:
        await self.bus.publish_event(
            report_routing_key(host_uuid, report), f"agent.report.{report}", body.to_wire()
        )
