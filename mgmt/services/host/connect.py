"""Connecting to a host: what its status becomes, and why.

A Simulator host is served by a simulator process (``python -m agents.simulator``): connecting
asks that process, on its control queue, to serve the host with the capacity it was added with,
then speaks ``agent.connect`` to it like to any agent. No simulator running: Disconnected, with the
reason. A KVM host needs its agent deployed over SSH (ZStack's connect chain: SSH check, Ansible,
agent start, connect), done by ``mgmt.core.hostdeploy`` when available; otherwise it stays
Disconnected with a reason saying exactly that, rather than pretending a connection.
"""

from __future__ import annotations

from dataclasses import dataclass

from bus.aio import AsyncBus
from bus.errors import RingstackError
from mgmt.core.agents import AgentClient
from mgmt.services.host.errors import HostError
from schema.agent import ConnectCommand, ConnectReply

SIMULATOR_CONTROL = "simulator"


@dataclass(frozen=True)
class ConnectResult:
    status: str
    reason: str | None = None
    facts: ConnectReply | None = None


async def connect_simulator(
    bus: AsyncBus, agents: AgentClient, host_uuid: str, cpu: int, memory: int, timeout: float = 15.0
) -> ConnectResult:
    control = f"{bus.topology.namespace}.{SIMULATOR_CONTROL}"
    try:
        await bus.call(
            control,
            "simulator.add_hosts",
            {"hosts": [{"uuid": host_uuid, "cpuNum": cpu, "memorySize": memory}]},
            timeout=timeout,
        )
        facts = await agents.call(ConnectCommand(host_uuid=host_uuid), ConnectReply, timeout=timeout)
    except RingstackError as exc:
        return ConnectResult(
            "Disconnected",
            f"{exc.code}: no simulator serves this host ({exc.message}); run python -m agents.simulator",
        )
    return ConnectResult("Connected", facts=facts)


def kvm_not_deployed() -> ConnectResult:
    return ConnectResult(
        "Disconnected",
        f"{HostError.AGENT_NOT_DEPLOYED}: the KVM agent is not deployed; agent deployment over SSH"
        " is not implemented yet",
    )
