"""Hosts: KVM hosts (reached over SSH, run the agent) and simulator hosts (for tests and demos).

A host's ``state`` is what the admin asked for (Enabled, Disabled, PreMaintenance, Maintenance);
its ``status`` is how its connection is (Connecting, Connected, Disconnected); ZStack keeps them
apart and so do we. SSH passwords and keys are write-only: no reply or event carries them.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, ClassVar, Literal, Self

from pydantic import AfterValidator, Field, SecretStr, model_validator

from schema.api.base import (
    CreateMessage,
    DeleteMessage,
    Description,
    EmptyReply,
    Inventory,
    Name,
    QueryMessage,
    QueryReply,
    Reply,
    ResourceMessage,
    Uuid,
)
from schema.api.cluster import HypervisorType

HostState = Literal["Enabled", "Disabled", "PreMaintenance", "Maintenance"]
HostStatus = Literal["Connecting", "Connected", "Disconnected"]
HostStateEvent = Literal["enable", "disable", "maintain"]

_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)
MiB = 1 << 20
TiB = 1 << 40


def check_address(value: str) -> str:
    """An IPv4/IPv6 address or a DNS host name (what SSH can reach); normalised addresses."""
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    if _HOSTNAME.match(value) and not value.replace(".", "").isdigit():
        return value.lower()
    raise ValueError("expected an IP address or a host name")


Address = Annotated[str, Field(min_length=1, max_length=253), AfterValidator(check_address)]
Username = Annotated[str, Field(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9_.][A-Za-z0-9_.@-]*$")]
SshPort = Annotated[int, Field(ge=1, le=65535)]
Password = Annotated[SecretStr, Field(min_length=1, max_length=1024)]
SshKey = Annotated[
    SecretStr, Field(min_length=1, max_length=16384, description="a private key (PEM/OpenSSH)")
]


class SshCredentials:
    """Mixin check: exactly one of ``password`` and ``sshKey``."""

    @model_validator(mode="after")
    def _one_secret(self) -> Self:
        if (getattr(self, "password", None) is None) == (getattr(self, "ssh_key", None) is None):
            raise ValueError("give exactly one of password and sshKey")
        return self


class HostInventory(Inventory):
    zone_uuid: str
    cluster_uuid: str
    hypervisor_type: HypervisorType
    management_ip: str
    state: HostState
    status: HostStatus
    status_reason: str | None = None
    ssh_port: int | None = None
    username: str | None = None
    total_cpu: int
    available_cpu: int
    total_memory_size: int
    available_memory_size: int


class HostReply(Reply):
    inventory: HostInventory


class AddKVMHost(SshCredentials, CreateMessage):
    """Store a KVM host and deploy its agent over SSH (``mgmt.core.hostdeploy``): the host is
    ``Connected`` with its facts, or stays ``Disconnected`` and the reply is ``HOST.DEPLOY_FAILED``
    naming the step and the reason. A first install takes about a minute."""

    service: ClassVar[str] = "host"
    admin_only: ClassVar[bool] = True
    reply = HostReply

    cluster_uuid: Uuid
    name: Name
    description: Description = None
    management_ip: Address
    username: Username = "root"
    password: Password | None = None
    ssh_key: SshKey | None = None
    ssh_port: SshPort = 22


class AddSimulatorHost(CreateMessage):
    """A simulated host: connected by definition, with the capacity the request gives it."""

    service: ClassVar[str] = "host"
    admin_only: ClassVar[bool] = True
    reply = HostReply

    cluster_uuid: Uuid
    name: Name
    description: Description = None
    management_ip: Address
    total_cpu: int = Field(ge=1, le=100_000)
    total_memory_size: int = Field(ge=MiB, le=1024 * TiB, description="bytes")


class UpdateHost(ResourceMessage):
    service: ClassVar[str] = "host"
    admin_only: ClassVar[bool] = True
    reply = HostReply

    name: Name | None = None
    description: Description = None
    management_ip: Address | None = None


class UpdateKVMHost(ResourceMessage):
    """Change how a KVM host is reached over SSH (takes effect at the next reconnect)."""

    service: ClassVar[str] = "host"
    admin_only: ClassVar[bool] = True
    reply = HostReply

    username: Username | None = None
    password: Password | None = None
    ssh_key: SshKey | None = None
    ssh_port: SshPort | None = None

    @model_validator(mode="after")
    def _at_most_one_secret(self) -> Self:
        if self.password is not None and self.ssh_key is not None:
            raise ValueError("give at most one of password and sshKey")
        return self


class ChangeHostState(ResourceMessage):
    """enable, disable, or maintain (PreMaintenance, then Maintenance once no VM is left on it)."""

    service: ClassVar[str] = "host"
    admin_only: ClassVar[bool] = True
    reply = HostReply

    state_event: HostStateEvent


class ReconnectHost(ResourceMessage):
    service: ClassVar[str] = "host"
    admin_only: ClassVar[bool] = True
    reply = HostReply


class DeleteHost(DeleteMessage):
    service: ClassVar[str] = "host"
    admin_only: ClassVar[bool] = True
    reply = EmptyReply


class QueryHost(QueryMessage):
    service: ClassVar[str] = "host"
    admin_only: ClassVar[bool] = True
    reply = QueryReply
