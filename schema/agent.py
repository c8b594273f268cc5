"""The hypervisor agent protocol, version 1: every command, its reply, and the agents' reports.

Spoken between management nodes and every hypervisor agent (the KVM agent, the simulator). One
place documents it all:

- Transport: a ringstack envelope (``bus.envelope``) of kind ``call`` on the agent's own queue
  ``<ns>.agent.<host_uuid>``; the agent answers on ``reply_to`` through the ``<ns>.replies``
  exchange (agents may publish nowhere else but their reports). Every call has a deadline; past
  it the management side gives up with ``SYS.TIMEOUT``.
- Every command names the host it is meant for (``hostUuid``). An agent refuses a command for
  another host with ``AGENT.WRONG_HOST`` (a swapped or re-imaged host), and ``agent.ping`` returns
  the uuid the agent believes it is, so the management side notices the swap itself.
- Every command is idempotent: starting a running VM, stopping a stopped one, destroying a missing
  one or creating a volume that exists succeed, report the state reached and say ``changed: false``.
- Reports travel on the events exchange with routing key ``agent.<host_uuid>.<report>``, e.g.
  ``agent.<host>.vm_state`` when a VM changes state on its own (shut down from inside, crashed).
- Every command and reply carries the protocol version; either side refuses another one with
  ``AGENT.PROTOCOL_MISMATCH`` (``schema.agent_base``, which also declares connect and ping).
- ``HypervisorAgent`` below is the protocol as a typed interface: one method per command, the
  command's name on its ``@command``. The KVM agent and the simulator subclass it.

Field names are camelCase on the wire, as everywhere in ringstack.
"""

from __future__ import annotations

import ipaddress
import re
from abc import abstractmethod
from typing import ClassVar, Literal

from pydantic import Field, model_validator

from schema.agent_base import (
    AgentErrors,
    AgentInterface,
    AgentReply,
    ConnectCommand,
    ConnectReply,
    EmptyReply,
    HostCommand,
    HostFacts,
    PingCommand,
    PingReply,
    Uuid,
    VmStatus,
    command,
    report_routing_key,
)
from schema.api.base import UUID_PATTERN, WireModel
from schema.secgroup import SecurityGroupProtocol, SecurityGroupRuleType, check_rule

__all__ = [  # the shared base, re-exported: hypervisor code imports its protocol from here
    "AgentErrors",
    "ConnectCommand",
    "ConnectReply",
    "EmptyReply",
    "HostCommand",
    "HostFacts",
    "PingCommand",
    "PingReply",
    "VmStatus",
    "report_routing_key",
]

PROTOCOL_VERSION = 1

HypervisorVmState = Literal["Running", "Stopped", "Paused", "Crashed"]


# ---------------------------------------------------------------------- specs


class VtepSpec(WireModel):
    host_uuid: Uuid
    vtep_ip: str

    @model_validator(mode="after")
    def _ipv4(self) -> VtepSpec:
        ipaddress.IPv4Address(self.vtep_ip)
        return self


class L2Spec(WireModel):
    uuid: Uuid
    type: Literal["L2NoVlanNetwork", "L2VlanNetwork", "L2VxlanNetwork"]
    physical_interface: str  # VXLAN: the underlay interface holding the host's VTEP address
    vlan: int | None = Field(default=None, ge=1, le=4094)
    bridge_name: str
    # VXLAN only (optional additions to protocol 1, left off the wire for other types): the
    # network's VNI and every VTEP of its pool, one per host. Each agent takes its own host's as
    # the local address and copies broadcast and unknown frames to all the others (head-end
    # replication: no multicast needed in the underlay), so one spec serves every host.
    vni: int | None = Field(default=None, ge=1, le=16777215)
    vteps: list[VtepSpec] | None = Field(default=None, max_length=4096)

    @model_validator(mode="after")
    def _vxlan(self) -> L2Spec:
        if self.type == "L2VxlanNetwork":
            if self.vni is None or self.vteps is None:
                raise ValueError("an L2VxlanNetwork needs vni and vteps")
        elif self.vni is not None or self.vteps is not None:
            raise ValueError(f"vni and vteps are for L2VxlanNetwork, not {self.type}")
        return self

    def local_vtep(self, host_uuid: str) -> tuple[str, list[str]]:
        """This host's VTEP address and the other hosts' (a VXLAN spec only)."""
        vteps = self.vteps or []
        mine = [v.vtep_ip for v in vteps if v.host_uuid == host_uuid]
        if not mine:
            raise ValueError(f"L2 network {self.uuid} has no VTEP for host {host_uuid}")
        return mine[0], sorted({v.vtep_ip for v in vteps if v.host_uuid != host_uuid} - {mine[0]})


class NicSpec(WireModel):
    uuid: Uuid
    mac: str = Field(pattern=r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$")
    ip: str | None = None
    netmask: str | None = None
    gateway: str | None = None
    l3_network_uuid: Uuid
    l2: L2Spec
    device_id: int = Field(ge=0)
    default: bool = False


class VolumeSpec(WireModel):
    uuid: Uuid
    install_path: str
    format: Literal["qcow2", "raw"] = "qcow2"
    size: int = Field(ge=0)
    device_id: int = Field(ge=0)
    type: Literal["Root", "Data"] = "Root"


class ApplianceSpec(WireModel):
    """The VM is a ringstack appliance (a virtual router): its agent, once booted, serves the
    appliance's protocol on the appliance's own queue (``<ns>.agent.<vm uuid>``)."""

    kind: Literal["VirtualRouter"]


class VmSpec(WireModel):
    uuid: Uuid
    name: str
    cpu_num: int = Field(ge=1, le=1024)
    memory_size: int = Field(ge=16 << 20, description="bytes")
    root_volume: VolumeSpec
    data_volumes: list[VolumeSpec] = Field(default_factory=list)
    nics: list[NicSpec] = Field(default_factory=list)
    console: Literal["vnc", "none"] = "vnc"
    # Extra boot inputs for images that are a kernel and an initrd rather than a disk (tests).
    kernel: str | None = None
    initrd: str | None = None
    kernel_args: str | None = None
    appliance: ApplianceSpec | None = None


# ---------------------------------------------------------------------- VM commands


class StartVmCommand(HostCommand):
    vm: VmSpec


class VmStateReply(AgentReply):
    vm_uuid: Uuid
    state: HypervisorVmState | Literal["Absent"]


class StopVmCommand(HostCommand):
    vm_uuid: Uuid
    type: Literal["grace", "cold"] = "grace"
    timeout: float = Field(default=60, gt=0, le=3600, description="seconds of ACPI shutdown before forcing")


class RebootVmCommand(HostCommand):
    vm_uuid: Uuid


class DestroyVmCommand(HostCommand):
    vm_uuid: Uuid


class MigrateVmCommand(HostCommand):
    vm_uuid: Uuid
    destination_host_uuid: Uuid
    destination_uri: str  # e.g. qemu+tcp://10.0.0.2/system; the simulator ignores it
    # True: every volume of the VM is on storage that source and destination share (NFS, a shared
    # mount point), so the agent waives libvirt's "unsafe migration" check, which knows no cluster
    # filesystems. An optional addition to protocol 1, sent only when true (None is left off the
    # wire, so an agent that predates it still takes every other migration).
    storage_shared: bool | None = None


class VolumeAttachCommand(HostCommand):
    vm_uuid: Uuid
    volume: VolumeSpec


class VolumeDetachCommand(VolumeAttachCommand):
    pass


class NicAttachCommand(HostCommand):
    vm_uuid: Uuid
    nic: NicSpec


class NicDetachCommand(NicAttachCommand):
    pass


class VmSyncCommand(HostCommand):
    pass


class VmSyncReply(AgentReply):
    vms: list[VmStatus]


class ConsoleCommand(HostCommand):
    vm_uuid: Uuid


class ConsoleReply(AgentReply):
    protocol: Literal["vnc"]
    hostname: str
    port: int


# ---------------------------------------------------------------------- storage and network


class CreateVolumeCommand(HostCommand):
    volume_uuid: Uuid
    primary_storage_uuid: Uuid
    primary_storage_url: str  # local: a directory on the host; nfs: host:/export, mounted by the agent
    # SharedMountPoint: a directory like local storage's, mounted by the operator on every host
    primary_storage_type: Literal["LocalStorage", "NFS", "SharedMountPoint"]
    size: int = Field(ge=0)
    image_uuid: Uuid | None = None  # a root volume: an overlay on this image, cached per host
    image_url: str | None = None  # where the agent fetches the image from (backup storage)


class VolumeReply(AgentReply):
    install_path: str
    actual_size: int


class DeleteVolumeCommand(HostCommand):
    """Delete a volume: by the ``installPath`` its create returned or, when that answer never came
    (the create timed out, its node died), by ``volumeUuid`` on the primary storage it was created
    on: the agent deletes whatever its create made for that uuid. Deleting a missing volume succeeds.

    The by-uuid fields are optional additions to protocol 1, so a message without them means what
    it always did. Senders set them only when they have no path: an agent that predates them
    refuses them (unknown fields are forbidden), which leaves the volume where it was before."""

    install_path: str = ""
    volume_uuid: Uuid | None = None
    primary_storage_uuid: Uuid | None = None
    primary_storage_url: str | None = None
    primary_storage_type: Literal["LocalStorage", "NFS", "SharedMountPoint"] | None = None

    @model_validator(mode="after")
    def _path_or_uuid(self) -> DeleteVolumeCommand:
        if not self.install_path and self.volume_uuid is None:
            raise ValueError("a volume delete needs installPath or volumeUuid")
        return self


class EnsureBridgeCommand(HostCommand):
    l2: L2Spec


class BridgeReply(AgentReply):
    bridge_name: str


class DeleteBridgeCommand(HostCommand):
    l2: L2Spec


# ---------------------------------------------------------------------- security groups
# The agent is told a host's whole desired state (every NIC in a security group there, its groups'
# rules, the members of every group a rule names as remote) and makes the host's tables match it,
# changing only what differs. Member changes alone go as ``securitygroup.update_members``: sets
# change, no rule does. Ingress is denied unless a rule allows it; egress is allowed unless a group
# of the NIC has egress rules, then only what they allow (ZStack's defaults).

MAC_PATTERN = r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$"


class SecurityGroupRuleSpec(WireModel):
    type: SecurityGroupRuleType
    protocol: SecurityGroupProtocol
    start_port: int | None = Field(default=None, ge=0, le=65535)
    end_port: int | None = Field(default=None, ge=0, le=65535)
    allowed_cidr: str | None = None  # the peer's addresses; None and no remote group: anyone
    remote_security_group_uuid: Uuid | None = Field(default=None, pattern=UUID_PATTERN)

    @model_validator(mode="after")
    def _consistent(self) -> SecurityGroupRuleSpec:
        check_rule(
            self.protocol, self.start_port, self.end_port, self.allowed_cidr, self.remote_security_group_uuid
        )
        return self


class SecurityGroupSpec(WireModel):
    uuid: Uuid = Field(pattern=UUID_PATTERN)
    rules: list[SecurityGroupRuleSpec] = Field(default_factory=list, max_length=1000)


class VmNicSecuritySpec(WireModel):
    nic_uuid: Uuid = Field(pattern=UUID_PATTERN)
    mac: str = Field(pattern=MAC_PATTERN)
    ips: list[str] = Field(max_length=64)  # the only source addresses the NIC may send from
    security_group_uuids: list[Uuid] = Field(min_length=1)

    @model_validator(mode="after")
    def _ipv4(self) -> VmNicSecuritySpec:
        for ip in self.ips:
            ipaddress.IPv4Address(ip)
        return self


def _check_members(members: dict[str, list[str]]) -> None:
    for group, ips in members.items():
        if not re.fullmatch(UUID_PATTERN, group):
            raise ValueError(f"{group!r} is not a security group uuid")
        for ip in ips:
            ipaddress.IPv4Address(ip)


class ApplySecurityGroupRulesCommand(HostCommand):
    """The host's whole security-group state; NICs and groups not in it lose their chains."""

    nics: list[VmNicSecuritySpec] = Field(default_factory=list)
    groups: list[SecurityGroupSpec] = Field(default_factory=list)
    members: dict[Uuid, list[str]] = Field(default_factory=dict)  # group -> member IPs

    @model_validator(mode="after")
    def _complete(self) -> ApplySecurityGroupRulesCommand:
        _check_members(self.members)
        known = {g.uuid for g in self.groups}
        for nic in self.nics:
            missing = set(nic.security_group_uuids) - known
            if missing:
                raise ValueError(f"NIC {nic.nic_uuid} is in groups not sent: {sorted(missing)}")
        return self


class UpdateSecurityGroupMembersCommand(HostCommand):
    """Replace the members of these groups' sets (sets the host does not use are skipped)."""

    members: dict[Uuid, list[str]]

    @model_validator(mode="after")
    def _valid(self) -> UpdateSecurityGroupMembersCommand:
        _check_members(self.members)
        return self


class SecurityGroupReply(AgentReply):
    rules_changed: int = 0  # iptables and ebtables rules added plus removed
    set_members_changed: int = 0
    restores: int = 0  # iptables-restore/ebtables-restore runs (each one atomic)


# ---------------------------------------------------------------------- flat networks
# The host's whole flat DHCP state: per L3 network of this host's VMs, the server (same address on
# every host), its options and the entries of this host's VM NICs only.


class FlatDhcpEntry(WireModel):
    mac: str = Field(pattern=MAC_PATTERN)
    ip: str
    hostname: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9-]{0,62}$")
    default: bool = True  # only the default NIC gets router and DNS options

    @model_validator(mode="after")
    def _ipv4(self) -> FlatDhcpEntry:
        ipaddress.IPv4Address(self.ip)
        return self


class FlatDhcpL3Spec(WireModel):
    l3_network_uuid: Uuid = Field(pattern=UUID_PATTERN)
    bridge_name: str
    uplink: str  # the bridge's port toward other hosts (physical interface, VLAN or VXLAN device)
    dhcp_server_ip: str
    netmask: str
    gateway: str | None = None
    dns: list[str] = Field(default_factory=list, max_length=8)
    dns_domain: str | None = None
    lease_time: int = Field(default=86400, ge=120)
    entries: list[FlatDhcpEntry] = Field(default_factory=list)

    @model_validator(mode="after")
    def _addresses(self) -> FlatDhcpL3Spec:
        for ip in [self.dhcp_server_ip, self.netmask, *([self.gateway] if self.gateway else []), *self.dns]:
            ipaddress.IPv4Address(ip)
        ipaddress.IPv4Network(f"0.0.0.0/{self.netmask}")
        return self


class ApplyFlatDhcpCommand(HostCommand):
    l3_networks: list[FlatDhcpL3Spec] = Field(default_factory=list)


class FlatDhcpReply(AgentReply):
    servers: int


# The host's whole flat EIP state: every Enabled EIP attached to a NIC of a VM on this host. The
# agent realises each as a NAT between the public bridge (holding the VIP) and the VM's bridge
# (answering the VM, and only it, as its gateway); EIPs not listed are removed.


class FlatEipSpec(WireModel):
    eip_uuid: Uuid = Field(pattern=UUID_PATTERN)
    vip_ip: str
    vip_netmask: str
    vip_gateway: str | None = None  # the public network's router (the EIP's default route)
    public_bridge: str
    guest_ip: str
    guest_mac: str = Field(pattern=MAC_PATTERN)
    guest_netmask: str
    guest_gateway: str  # the VM's default gateway, which the EIP stands in for toward this VM
    guest_bridge: str
    guest_uplink: str  # the guest bridge's port toward other hosts

    @model_validator(mode="after")
    def _addresses(self) -> FlatEipSpec:
        for ip in [
            self.vip_ip,
            self.guest_ip,
            self.guest_gateway,
            *([self.vip_gateway] if self.vip_gateway else []),
        ]:
            ipaddress.IPv4Address(ip)
        for mask in (self.vip_netmask, self.guest_netmask):
            ipaddress.IPv4Network(f"0.0.0.0/{mask}")
        return self


class ApplyFlatEipCommand(HostCommand):
    eips: list[FlatEipSpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> ApplyFlatEipCommand:
        for what in ("eip_uuid", "vip_ip", "guest_mac"):
            values = [getattr(e, what) for e in self.eips]
            if len(values) != len(set(values)):
                raise ValueError(f"two EIPs with one {what}")
        return self


class FlatEipReply(AgentReply):
    eips: int


# ---------------------------------------------------------------------- reports


class VmStateReport(WireModel):
    host_uuid: Uuid
    vm_uuid: Uuid
    state: HypervisorVmState | Literal["Absent"]
    reason: str = ""


REPORT_VM_STATE = "vm_state"


# ---------------------------------------------------------------------- the interface


class HypervisorAgent(AgentInterface):
    """The hypervisor agent protocol: what the KVM agent and the simulator serve."""

    PROTOCOL: ClassVar[str] = "hypervisor"
    VERSION: ClassVar[int] = PROTOCOL_VERSION

    @command("agent.vm.start")
    @abstractmethod
    async def vm_start(self, cmd: StartVmCommand) -> VmStateReply: ...

    @command("agent.vm.stop")
    @abstractmethod
    async def vm_stop(self, cmd: StopVmCommand) -> VmStateReply: ...

    @command("agent.vm.reboot")
    @abstractmethod
    async def vm_reboot(self, cmd: RebootVmCommand) -> VmStateReply: ...

    @command("agent.vm.destroy")
    @abstractmethod
    async def vm_destroy(self, cmd: DestroyVmCommand) -> VmStateReply: ...

    @command("agent.vm.migrate")
    @abstractmethod
    async def vm_migrate(self, cmd: MigrateVmCommand) -> VmStateReply: ...

    @command("agent.vm.attach_volume")
    @abstractmethod
    async def vm_attach_volume(self, cmd: VolumeAttachCommand) -> EmptyReply: ...

    @command("agent.vm.detach_volume")
    @abstractmethod
    async def vm_detach_volume(self, cmd: VolumeDetachCommand) -> EmptyReply: ...

    @command("agent.vm.attach_nic")
    @abstractmethod
    async def vm_attach_nic(self, cmd: NicAttachCommand) -> EmptyReply: ...

    @command("agent.vm.detach_nic")
    @abstractmethod
    async def vm_detach_nic(self, cmd: NicDetachCommand) -> EmptyReply: ...

    @command("agent.vm.sync", mutating=False)
    @abstractmethod
    async def vm_sync(self, cmd: VmSyncCommand) -> VmSyncReply: ...

    @command("agent.vm.console", mutating=False)
    @abstractmethod
    async def vm_console(self, cmd: ConsoleCommand) -> ConsoleReply: ...

    @command("agent.volume.create")
    @abstractmethod
    async def volume_create(self, cmd: CreateVolumeCommand) -> VolumeReply: ...

    @command("agent.volume.delete")
    @abstractmethod
    async def volume_delete(self, cmd: DeleteVolumeCommand) -> EmptyReply: ...

    @command("agent.network.ensure_bridge")
    @abstractmethod
    async def network_ensure_bridge(self, cmd: EnsureBridgeCommand) -> BridgeReply: ...

    @command("agent.network.delete_bridge")
    @abstractmethod
    async def network_delete_bridge(self, cmd: DeleteBridgeCommand) -> EmptyReply: ...

    @command("agent.securitygroup.apply")
    @abstractmethod
    async def securitygroup_apply(self, cmd: ApplySecurityGroupRulesCommand) -> SecurityGroupReply: ...

    @command("agent.securitygroup.update_members")
    @abstractmethod
    async def securitygroup_update_members(
        self, cmd: UpdateSecurityGroupMembersCommand
    ) -> SecurityGroupReply: ...

    @command("agent.flat.apply_dhcp")
    @abstractmethod
    async def flat_apply_dhcp(self, cmd: ApplyFlatDhcpCommand) -> FlatDhcpReply: ...

    @command("agent.flat.apply_eip")
    @abstractmethod
    async def flat_apply_eip(self, cmd: ApplyFlatEipCommand) -> FlatEipReply: ...
