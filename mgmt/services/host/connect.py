"""Connecting to a host: what its status becomes, and why.

Simulator hosts are connected by definition (their simulated agent arrives with the VM-lifecycle
issue). KVM hosts need the agent deployed over SSH (ZStack's connect chain: SSH check, Ansible,
agent start, echo), which arrives with a later issue; until then they stay Disconnected with a
reason saying exactly that, rather than pretending a connection.
"""

from __future__ import annotations

from dataclasses import dataclass

from mgmt.services.host.errors import HostError


@dataclass(frozen=True)
class ConnectResult:
    status: str
    reason: str | None = None


def connect(hypervisor_type: str) -> ConnectResult:
    if hypervisor_type == "Simulator":
        return ConnectResult("Connected")
    return ConnectResult(
        "Disconnected",
        f"{HostError.AGENT_NOT_DEPLOYED}: the KVM agent is not deployed; agent deployment over SSH"
        " is not implemented yet",
    )
