"""What every agent protocol shares (the hypervisor agent's in ``schema.agent``, the virtual
router's in its own module): the command and reply bases, connect and ping, host facts, the
version check and the ``changed`` flag, and the way a protocol is declared.

A protocol is an abstract class with one method per command, each marked ``@command("name")``:

    class HypervisorAgent(AgentInterface):
        PROTOCOL = "hypervisor"
        VERSION = 1

        @command("agent.vm.start")
        async def vm_start(self, cmd: StartVmCommand) -> VmStateReply: ...

An agent implements it by subclassing (mypy checks every signature, and an agent missing a command
cannot be instantiated); ``AgentServer`` dispatches on the table ``commands_of`` reads from the
class (the name, the request and reply models, the method); ``AgentClient`` checks what it sends
against the same table. A second agent kind subclasses ``AgentInterface`` with its own commands and
version, and inherits connect and ping.

Versioning: every command carries the sender's ``protocolVersion`` and every reply the agent's;
each side refuses another version with ``AGENT.PROTOCOL_MISMATCH`` on every call, not only at
connect, so an agent replaced by another release mid-session is noticed at its next command.

``changed`` (Ansible's convention): a reply to a command that changes the host says whether it
did; a repeated command (they are all idempotent) answers ``changed: false``, and the management
side logs the no-op.
"""

from __future__ import annotations

import functools
import typing
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import ClassVar, Literal, TypeVar

from pydantic import Field

from schema.api.base import UUID_PATTERN, WireModel

Uuid = str


class AgentErrors:
    WRONG_HOST = "AGENT.WRONG_HOST"
    PROTOCOL_MISMATCH = "AGENT.PROTOCOL_MISMATCH"
    VM_NOT_FOUND = "AGENT.VM_NOT_FOUND"
    INSUFFICIENT_CAPACITY = "AGENT.INSUFFICIENT_CAPACITY"
    HYPERVISOR_ERROR = "AGENT.HYPERVISOR_ERROR"  # libvirt (or the simulator) refused; message says why
    INJECTED_FAILURE = "AGENT.INJECTED_FAILURE"  # the simulator failed on purpose


class HostCommand(WireModel):
    """Every command names its host and the protocol version its sender speaks (``AgentClient``
    fills it in from the protocol it calls)."""

    host_uuid: Uuid = Field(pattern=UUID_PATTERN)
    protocol_version: int | None = Field(default=None, ge=1)


class AgentReply(WireModel):
    """Every reply: whether the command changed the host, and the version the agent speaks
    (``AgentServer`` fills it in)."""

    changed: bool = False
    protocol_version: int | None = Field(default=None, ge=1)


class EmptyReply(AgentReply):
    pass


def report_routing_key(host_uuid: str, report: str) -> str:
    """Reports travel on the events exchange under ``agent.<host_uuid>.<report>``."""
    return f"agent.{host_uuid}.{report}"


# ---------------------------------------------------------------------- connect, ping


class ConnectCommand(HostCommand):
    management_node_uuid: Uuid | None = None


class HostFacts(WireModel):
    hypervisor: Literal["kvm", "qemu", "simulator", "vrouter"]
    cpu_num: int = Field(ge=1)
    cpu_model: str = ""
    memory_size: int = Field(ge=0, description="bytes")
    hostname: str = ""
    os: str = ""
    libvirt_version: str | None = None
    qemu_version: str | None = None


class VmStatus(WireModel):
    uuid: Uuid
    state: Literal["Running", "Stopped", "Paused", "Crashed"]


class ConnectReply(AgentReply):
    host_uuid: Uuid
    agent_version: str
    facts: HostFacts
    vms: list[VmStatus] = Field(default_factory=list)  # a hypervisor's VMs; empty for other kinds


class PingCommand(HostCommand):
    pass


class PingReply(AgentReply):
    host_uuid: Uuid  # the host the agent believes it is
    agent_version: str
    uptime: float


# ---------------------------------------------------------------------- declaring a protocol

M = TypeVar("M", bound=Callable[..., Awaitable[AgentReply]])


def command(name: str, *, mutating: bool = True) -> Callable[[M], M]:
    """Declare an interface method (an ``abstractmethod``) as the command ``name``;
    ``mutating=False`` for reads (their replies never say ``changed``)."""

    def mark(method: M) -> M:
        method.__agent_command__ = (name, mutating)  # type: ignore[attr-defined]
        return method

    return mark


@dataclass(frozen=True)
class CommandSpec:
    name: str
    request: type[HostCommand]
    reply: type[AgentReply]
    method: str  # the interface method serving it
    mutating: bool


class AgentInterface(ABC):
    """The commands every agent kind serves. Subclasses name their protocol and version."""

    PROTOCOL: ClassVar[str]
    VERSION: ClassVar[int]
    host_uuid: str

    @command("agent.connect", mutating=False)
    @abstractmethod
    async def connect(self, cmd: ConnectCommand) -> ConnectReply: ...

    @command("agent.ping", mutating=False)
    @abstractmethod
    async def ping(self, cmd: PingCommand) -> PingReply: ...


@functools.cache
def commands_of(interface: type[AgentInterface]) -> dict[str, CommandSpec]:
    """The protocol's command table, read from the interface (any agent class of it works too)."""
    table: dict[str, CommandSpec] = {}
    for cls in reversed(interface.__mro__):
        for attr, member in vars(cls).items():
            marked = getattr(member, "__agent_command__", None)
            if marked is None:
                continue
            name, mutating = marked
            hints = typing.get_type_hints(member)
            table[name] = CommandSpec(name, hints["cmd"], hints["return"], attr, mutating)
    return table


def protocol_of(agent_class: type[AgentInterface]) -> type[AgentInterface]:
    """The interface an agent class implements (the class that declares ``VERSION``)."""
    for cls in agent_class.__mro__:
        if "VERSION" in vars(cls):
            return typing.cast(type[AgentInterface], cls)
    raise TypeError(f"{agent_class.__name__} implements no agent protocol")
