"""A simulated hypervisor: one process answers the agent protocol for many hosts.

Each simulated host has its own queue, CPU and memory capacity and list of VMs, and answers every
command of ``schema.agent`` the way a real agent would (idempotently, refusing what would exceed
its capacity). Faults can be injected per host and command: latency, failing the Nth call or
every call, never answering (a hung agent), exiting the whole process (a crashed agent), or
claiming to be another host (a swapped one). VMs can be changed behind the management's back to
test reconciliation.

A control queue ``<ns>.simulator`` takes ``simulator.*`` calls: add/remove hosts, configure faults,
change a VM's state, list everything. ``AddSimulatorHost`` uses it to bring a host up.
"""

from __future__ import annotations

import asyncio
import logging
import time
import typing
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from pydantic import Field

from agents.common.server import AgentServer
from agents.simulator.faults import Fault, enter_faults
from agents.simulator.vrouter import SimVrouter
from bus.aio import AsyncBus
from bus.envelope import Envelope
from bus.errors import RingstackError, Sys
from bus.topology import QueueSpec
from schema.agent import (
    REPORT_VM_STATE,
    AgentErrors,
    ApplyFlatDhcpCommand,
    ApplyFlatEipCommand,
    ApplySecurityGroupRulesCommand,
    BridgeReply,
    ConnectCommand,
    ConnectReply,
    ConsoleCommand,
    ConsoleReply,
    CreateVolumeCommand,
    DeleteBridgeCommand,
    DeleteVolumeCommand,
    DestroyVmCommand,
    EmptyReply,
    EnsureBridgeCommand,
    FlatDhcpReply,
    FlatEipReply,
    HostFacts,
    HypervisorAgent,
    MigrateVmCommand,
    NicAttachCommand,
    NicDetachCommand,
    PingCommand,
    PingReply,
    RebootVmCommand,
    SecurityGroupReply,
    StartVmCommand,
    StopVmCommand,
    UpdateSecurityGroupMembersCommand,
    VmSpec,
    VmStateReply,
    VmStateReport,
    VmStatus,
    VmSyncCommand,
    VmSyncReply,
    VolumeAttachCommand,
    VolumeDetachCommand,
    VolumeReply,
)
from schema.api.base import UUID_PATTERN, WireModel, parse_wire

log = logging.getLogger(__name__)

AGENT_VERSION = "ringstack-simulator/1"
R = TypeVar("R")
C = TypeVar("C")
Served = Callable[["SimHost", C], Coroutine[Any, Any, R]]


@dataclass
class SimVm:
    spec: VmSpec
    state: Literal["Running", "Stopped", "Paused", "Crashed"]


def _per_vm(method: Served[C, R]) -> Served[C, R]:
    """Commands about one VM run one at a time, in arrival order, as on a real agent: a destroy
    sent while a slow start is still running must not overtake it."""

    async def serialised(self: SimHost, cmd: C) -> R:
        vm_uuid = cmd.vm.uuid if isinstance(cmd, StartVmCommand) else typing.cast(Any, cmd).vm_uuid
        lock = self.vm_locks.setdefault(vm_uuid, asyncio.Lock())
        async with lock:
            return await method(self, cmd)

    return serialised


def _per_volume(method: Served[C, R]) -> Served[C, R]:
    """Commands about one volume run one at a time, in arrival order: a delete sent while its slow
    create is still running (the create's caller gave up on it) deletes what that create makes."""

    async def serialised(self: SimHost, cmd: C) -> R:
        assert isinstance(cmd, CreateVolumeCommand | DeleteVolumeCommand)
        if isinstance(cmd, CreateVolumeCommand) or cmd.volume_uuid is not None:
            volume_uuid = str(cmd.volume_uuid)
        else:
            volume_uuid = cmd.install_path.rsplit("/", 1)[-1].removesuffix(".qcow2")
        lock = self.volume_locks.setdefault(volume_uuid, asyncio.Lock())
        async with lock:
            return await method(self, cmd)

    return serialised


@dataclass
class SimHost(HypervisorAgent):
    host_uuid: str
    cpu_num: int
    memory_size: int
    simulator: Simulator
    vms: dict[str, SimVm] = field(default_factory=dict)
    volumes: dict[str, int] = field(default_factory=dict)  # install path -> size
    bridges: set[str] = field(default_factory=set)
    # security groups as a real host would hold them: NIC -> its groups, group -> rules, set -> IPs
    sg_nics: dict[str, list[str]] = field(default_factory=dict)
    sg_rules: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    sg_members: dict[str, set[str]] = field(default_factory=dict)
    flat_dhcp: dict[str, dict[str, str]] = field(default_factory=dict)  # L3 -> MAC -> IP served here
    flat_eips: dict[str, tuple[str, str]] = field(default_factory=dict)  # VIP -> (guest IP, MAC) here
    faults: dict[str, Fault] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    pretend_uuid: str | None = None
    started: float = field(default_factory=time.monotonic)
    vm_locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    volume_locks: dict[str, asyncio.Lock] = field(default_factory=dict)

    # ------------------------------------------------------------------ faults

    async def _enter(self, command: str) -> None:
        await enter_faults(self, command)

    def _used(self) -> tuple[int, int]:
        running = [vm.spec for vm in self.vms.values() if vm.state in ("Running", "Paused")]
        return sum(s.cpu_num for s in running), sum(s.memory_size for s in running)

    def _status(self) -> list[VmStatus]:
        return [VmStatus(uuid=uuid, state=vm.state) for uuid, vm in self.vms.items()]

    # ------------------------------------------------------------------ host

    async def connect(self, cmd: ConnectCommand) -> ConnectReply:
        await self._enter("agent.connect")
        facts = HostFacts(
            hypervisor="simulator",
            cpu_num=self.cpu_num,
            cpu_model="simulated",
            memory_size=self.memory_size,
            hostname=f"sim-{self.host_uuid[:8]}",
            os="simulated",
        )
        return ConnectReply(
            host_uuid=self.host_uuid,
            agent_version=AGENT_VERSION,
            facts=facts,
            vms=self._status(),
        )

    async def ping(self, cmd: PingCommand) -> PingReply:
        await self._enter("agent.ping")
        return PingReply(
            host_uuid=self.pretend_uuid or self.host_uuid,
            agent_version=AGENT_VERSION,
            uptime=time.monotonic() - self.started,
        )

    # ------------------------------------------------------------------ VMs

    def _vm(self, vm_uuid: str) -> SimVm:
        vm = self.vms.get(vm_uuid)
        if vm is None:
            raise RingstackError(AgentErrors.VM_NOT_FOUND, f"VM {vm_uuid} is not on host {self.host_uuid}")
        return vm

    @_per_vm
    async def vm_start(self, cmd: StartVmCommand) -> VmStateReply:
        await self._enter("agent.vm.start")
        vm = self.vms.get(cmd.vm.uuid)
        if vm is not None and vm.state == "Running":
            return VmStateReply(vm_uuid=cmd.vm.uuid, state="Running")
        cpu, memory = self._used()
        if cpu + cmd.vm.cpu_num > self.cpu_num or memory + cmd.vm.memory_size > self.memory_size:
            raise RingstackError(
                AgentErrors.INSUFFICIENT_CAPACITY,
                f"host {self.host_uuid} has {self.cpu_num - cpu} CPUs and {self.memory_size - memory} bytes free",
            )
        self.vms[cmd.vm.uuid] = SimVm(cmd.vm, "Running")
        self.bridges.update(nic.l2.bridge_name for nic in cmd.vm.nics)  # as the KVM agent's start does
        await self.simulator.appliance_booted(cmd.vm)
        return VmStateReply(vm_uuid=cmd.vm.uuid, state="Running", changed=True)

    @_per_vm
    async def vm_stop(self, cmd: StopVmCommand) -> VmStateReply:
        await self._enter("agent.vm.stop")
        vm = self.vms.get(cmd.vm_uuid)
        if vm is None:
            return VmStateReply(vm_uuid=cmd.vm_uuid, state="Absent")
        changed = vm.state in ("Running", "Paused")
        vm.state = "Stopped"
        await self.simulator.appliance_down(cmd.vm_uuid)
        return VmStateReply(vm_uuid=cmd.vm_uuid, state="Stopped", changed=changed)

    @_per_vm
    async def vm_reboot(self, cmd: RebootVmCommand) -> VmStateReply:
        await self._enter("agent.vm.reboot")
        vm = self._vm(cmd.vm_uuid)
        vm.state = "Running"
        await self.simulator.appliance_down(cmd.vm_uuid)  # a reboot loses every rule
        await self.simulator.appliance_booted(vm.spec)
        return VmStateReply(vm_uuid=cmd.vm_uuid, state="Running", changed=True)

    @_per_vm
    async def vm_destroy(self, cmd: DestroyVmCommand) -> VmStateReply:
        await self._enter("agent.vm.destroy")
        gone = self.vms.pop(cmd.vm_uuid, None)
        await self.simulator.appliance_down(cmd.vm_uuid)
        return VmStateReply(vm_uuid=cmd.vm_uuid, state="Absent", changed=gone is not None)

    @_per_vm
    async def vm_migrate(self, cmd: MigrateVmCommand) -> VmStateReply:
        await self._enter("agent.vm.migrate")
        destination = self.simulator.hosts.get(cmd.destination_host_uuid)
        if destination is None:
            raise RingstackError(
                AgentErrors.HYPERVISOR_ERROR, f"destination host {cmd.destination_host_uuid} unknown"
            )
        vm = self.vms.get(cmd.vm_uuid)
        if vm is None:
            if cmd.vm_uuid in destination.vms:  # already moved: idempotent
                return VmStateReply(vm_uuid=cmd.vm_uuid, state=destination.vms[cmd.vm_uuid].state)
            raise RingstackError(
                AgentErrors.VM_NOT_FOUND, f"VM {cmd.vm_uuid} is not on host {self.host_uuid}"
            )
        cpu, memory = destination._used()
        if (
            cpu + vm.spec.cpu_num > destination.cpu_num
            or memory + vm.spec.memory_size > destination.memory_size
        ):
            raise RingstackError(
                AgentErrors.INSUFFICIENT_CAPACITY, f"destination {destination.host_uuid} is full"
            )
        destination.vms[cmd.vm_uuid] = self.vms.pop(cmd.vm_uuid)
        return VmStateReply(vm_uuid=cmd.vm_uuid, state=destination.vms[cmd.vm_uuid].state, changed=True)

    async def vm_attach_volume(self, cmd: VolumeAttachCommand) -> EmptyReply:
        await self._enter("agent.vm.attach_volume")
        vm = self._vm(cmd.vm_uuid)
        if any(v.uuid == cmd.volume.uuid for v in vm.spec.data_volumes):
            return EmptyReply()
        vm.spec.data_volumes.append(cmd.volume)
        return EmptyReply(changed=True)

    async def vm_detach_volume(self, cmd: VolumeDetachCommand) -> EmptyReply:
        await self._enter("agent.vm.detach_volume")
        vm = self._vm(cmd.vm_uuid)
        kept = [v for v in vm.spec.data_volumes if v.uuid != cmd.volume.uuid]
        changed, vm.spec.data_volumes = len(kept) != len(vm.spec.data_volumes), kept
        return EmptyReply(changed=changed)

    async def vm_attach_nic(self, cmd: NicAttachCommand) -> EmptyReply:
        await self._enter("agent.vm.attach_nic")
        vm = self._vm(cmd.vm_uuid)
        if any(n.uuid == cmd.nic.uuid for n in vm.spec.nics):
            return EmptyReply()
        self.bridges.add(cmd.nic.l2.bridge_name)
        vm.spec.nics.append(cmd.nic)
        return EmptyReply(changed=True)

    async def vm_detach_nic(self, cmd: NicDetachCommand) -> EmptyReply:
        await self._enter("agent.vm.detach_nic")
        vm = self._vm(cmd.vm_uuid)
        kept = [n for n in vm.spec.nics if n.uuid != cmd.nic.uuid]
        changed, vm.spec.nics = len(kept) != len(vm.spec.nics), kept
        return EmptyReply(changed=changed)

    async def vm_sync(self, cmd: VmSyncCommand) -> VmSyncReply:
        await self._enter("agent.vm.sync")
        return VmSyncReply(vms=self._status())

    async def vm_console(self, cmd: ConsoleCommand) -> ConsoleReply:
        await self._enter("agent.vm.console")
        index = list(self.vms).index(self._vm(cmd.vm_uuid).spec.uuid)
        return ConsoleReply(protocol="vnc", hostname="127.0.0.1", port=5900 + index)

    # ------------------------------------------------------------------ storage, network

    @_per_volume
    async def volume_create(self, cmd: CreateVolumeCommand) -> VolumeReply:
        await self._enter("agent.volume.create")
        path = _volume_path(cmd.primary_storage_url, cmd.volume_uuid)
        changed = path not in self.volumes
        self.volumes[path] = cmd.size
        return VolumeReply(install_path=path, actual_size=0, changed=changed)

    @_per_volume
    async def volume_delete(self, cmd: DeleteVolumeCommand) -> EmptyReply:
        await self._enter("agent.volume.delete")
        if cmd.install_path:
            paths = [cmd.install_path]
        elif cmd.primary_storage_url is not None:
            # By uuid: the path its create made (or would have made) on that primary storage.
            paths = [_volume_path(cmd.primary_storage_url, str(cmd.volume_uuid))]
        else:
            paths = [p for p in self.volumes if p.endswith(f"/{cmd.volume_uuid}.qcow2")]
        deleted = [p for p in paths if self.volumes.pop(p, None) is not None]
        return EmptyReply(changed=bool(deleted))

    async def network_ensure_bridge(self, cmd: EnsureBridgeCommand) -> BridgeReply:
        await self._enter("agent.network.ensure_bridge")
        changed = cmd.l2.bridge_name not in self.bridges
        self.bridges.add(cmd.l2.bridge_name)
        return BridgeReply(bridge_name=cmd.l2.bridge_name, changed=changed)

    async def network_delete_bridge(self, cmd: DeleteBridgeCommand) -> EmptyReply:
        await self._enter("agent.network.delete_bridge")
        changed = cmd.l2.bridge_name in self.bridges
        self.bridges.discard(cmd.l2.bridge_name)
        return EmptyReply(changed=changed)

    async def securitygroup_apply(self, cmd: ApplySecurityGroupRulesCommand) -> SecurityGroupReply:
        await self._enter("agent.securitygroup.apply")
        nics = {n.nic_uuid: list(n.security_group_uuids) for n in cmd.nics}
        used = {g for groups in nics.values() for g in groups}
        rules = {g.uuid: [r.to_wire() for r in g.rules] for g in cmd.groups if g.uuid in used}
        remotes = {
            r["remoteSecurityGroupUuid"]
            for rs in rules.values()
            for r in rs
            if "remoteSecurityGroupUuid" in r
        }
        members = {g: set(cmd.members.get(g, [])) for g in remotes | set(cmd.members)} if nics else {}
        rules_changed = nics != self.sg_nics or rules != self.sg_rules
        member_changes = _set_changes(self.sg_members, members)
        self.sg_nics, self.sg_rules, self.sg_members = nics, rules, members
        return SecurityGroupReply(
            changed=rules_changed or bool(member_changes),
            rules_changed=int(rules_changed),
            set_members_changed=member_changes,
            restores=int(rules_changed),
        )

    async def securitygroup_update_members(
        self, cmd: UpdateSecurityGroupMembersCommand
    ) -> SecurityGroupReply:
        await self._enter("agent.securitygroup.update_members")
        wanted = {g: set(ips) for g, ips in cmd.members.items() if g in self.sg_members}
        changes = _set_changes({g: self.sg_members[g] for g in wanted}, wanted)
        self.sg_members.update(wanted)
        return SecurityGroupReply(changed=bool(changes), set_members_changed=changes)

    async def flat_apply_dhcp(self, cmd: ApplyFlatDhcpCommand) -> FlatDhcpReply:
        await self._enter("agent.flat.apply_dhcp")
        wanted = {l3.l3_network_uuid: {e.mac: e.ip for e in l3.entries} for l3 in cmd.l3_networks}
        changed, self.flat_dhcp = wanted != self.flat_dhcp, wanted
        return FlatDhcpReply(changed=changed, servers=len(wanted))

    async def flat_apply_eip(self, cmd: ApplyFlatEipCommand) -> FlatEipReply:
        await self._enter("agent.flat.apply_eip")
        for eip in cmd.eips:
            for bridge in (eip.public_bridge, eip.guest_bridge):
                if bridge not in self.bridges:
                    raise RingstackError(
                        AgentErrors.HYPERVISOR_ERROR, f"bridge {bridge} of EIP {eip.vip_ip} is missing"
                    )
        wanted = {e.vip_ip: (e.guest_ip, e.guest_mac) for e in cmd.eips}
        changed, self.flat_eips = wanted != self.flat_eips, wanted
        return FlatEipReply(changed=changed, eips=len(wanted))


def _set_changes(old: dict[str, set[str]], new: dict[str, set[str]]) -> int:
    return sum(len(old.get(k, set()) ^ new.get(k, set())) for k in old.keys() | new.keys())


def _volume_path(primary_storage_url: str, volume_uuid: str) -> str:
    return f"{primary_storage_url.rstrip('/')}/{volume_uuid}.qcow2"


# ---------------------------------------------------------------------- control messages


class SimHostSpec(WireModel):
    uuid: str = Field(pattern=UUID_PATTERN)
    cpu_num: int = Field(default=32, ge=1, le=4096)
    memory_size: int = Field(default=128 << 30, ge=1 << 20)


class AddHosts(WireModel):
    hosts: list[SimHostSpec] = Field(max_length=10_000)


class AddVrouters(WireModel):
    vrouters: list[str] = Field(max_length=10_000, description="VR uuids")


class ConfigureAppliances(WireModel):
    # False: an appliance VM started here boots no simulated agent (a test runs a real one).
    boot: bool


class RemoveHost(WireModel):
    uuid: str = Field(pattern=UUID_PATTERN)


class Configure(WireModel):
    host_uuid: str = Field(
        description="a host uuid, * for every host, or appliances for the agents of appliance VMs booted from now on"
    )
    command: str = Field(description="an agent command name, or * for every command")
    fault: Fault | None = None  # None clears it
    pretend_uuid: str | None = None


class SetVmState(WireModel):
    host_uuid: str = Field(pattern=UUID_PATTERN)
    vm_uuid: str = Field(pattern=UUID_PATTERN)
    state: Literal["Running", "Stopped", "Paused", "Crashed", "Absent"]
    report: bool = True  # publish a vm_state report, as a real agent's libvirt event would
    spec: VmSpec | None = None  # needed to make a VM appear that the host did not have


class Simulator:
    def __init__(self, bus: AsyncBus, name: str = "simulator") -> None:
        self.bus = bus
        self.name = name
        self.server = AgentServer(bus)
        self.hosts: dict[str, SimHost] = {}
        # Virtual routers speak their own protocol on the same kind of queue (the server dispatches
        # on each agent's interface).
        self.vrouters: dict[str, SimVrouter] = {}
        self.appliances: dict[str, str] = {}  # VM uuid -> appliance kind, remembered across stops
        self.boot_appliances = True
        # Faults every appliance's simulated agent gets when it boots (``hostUuid`` "appliances").
        self.appliance_faults: dict[str, Fault] = {}

    @property
    def control_queue(self) -> QueueSpec:
        return QueueSpec(f"{self.bus.topology.namespace}.{self.name}", exclusive=True)

    async def start(self) -> None:
        await self.bus.start()
        await self.bus.start_consumer(self.bus.consume(self.control_queue, self._on_control, prefetch=64))

    async def add_host(self, spec: SimHostSpec) -> SimHost:
        host = self.hosts.get(spec.uuid)
        if host is None:
            host = self.hosts[spec.uuid] = SimHost(spec.uuid, spec.cpu_num, spec.memory_size, self)
        await self.server.serve(host)
        return host

    async def add_vrouter(self, uuid: str) -> SimVrouter:
        vr = self.vrouters.get(uuid)
        if vr is None:
            vr = self.vrouters[uuid] = SimVrouter(uuid)
        await self.server.serve(vr)
        return vr

    async def appliance_booted(self, spec: VmSpec) -> None:
        """An appliance VM (a virtual router) came up: its agent starts with an empty state, as
        a real appliance's does after a boot."""
        if spec.appliance is not None:
            self.appliances[spec.uuid] = spec.appliance.kind
        if spec.uuid in self.appliances and self.boot_appliances:
            await self.server.stop_serving(spec.uuid)
            self.vrouters.pop(spec.uuid, None)
            vr = await self.add_vrouter(spec.uuid)
            vr.faults.update(self.appliance_faults)

    async def appliance_down(self, vm_uuid: str) -> None:
        if vm_uuid in self.vrouters and vm_uuid in self.appliances:
            await self.server.stop_serving(vm_uuid)
            del self.vrouters[vm_uuid]

    async def _on_control(self, env: Envelope) -> dict[str, Any]:
        return await self.control(env.name.removeprefix("simulator."), env.body)

    async def control(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """One control call (``add_hosts``, ``configure``, ...), also callable in-process."""
        env = Envelope(name=f"simulator.{name}", kind="call", body=body)
        if env.name == "simulator.add_hosts":
            for spec in parse_wire(AddHosts, env.body).hosts:
                await self.add_host(spec)
            return {"hosts": len(self.hosts)}
        if env.name == "simulator.remove_host":
            uuid = parse_wire(RemoveHost, env.body).uuid
            await self.server.stop_serving(uuid)
            self.hosts.pop(uuid, None)
            self.vrouters.pop(uuid, None)
            return {}
        if env.name == "simulator.add_vrouters":
            for uuid in parse_wire(AddVrouters, env.body).vrouters:
                await self.add_vrouter(uuid)
            return {"vrouters": len(self.vrouters)}
        if env.name == "simulator.configure_appliances":
            self.boot_appliances = parse_wire(ConfigureAppliances, env.body).boot
            return {}
        if env.name == "simulator.configure":
            return self._configure(parse_wire(Configure, env.body))
        if env.name == "simulator.set_vm_state":
            await self._set_vm_state(parse_wire(SetVmState, env.body))
            return {}
        if env.name == "simulator.inventory":
            return {
                "hosts": {
                    uuid: {
                        "vms": {v: vm.state for v, vm in h.vms.items()},
                        "calls": h.calls,
                        "volumes": len(h.volumes),
                        "securityGroups": {
                            "nics": h.sg_nics,
                            "rules": h.sg_rules,
                            "members": {g: sorted(ips) for g, ips in h.sg_members.items()},
                        },
                    }
                    for uuid, h in self.hosts.items()
                },
                "vrouters": {
                    uuid: {"counts": v.counts().to_wire(), "calls": v.calls}
                    for uuid, v in self.vrouters.items()
                },
            }
        raise RingstackError(Sys.UNKNOWN_MESSAGE, f"the simulator does not know {env.name!r}")

    def _configure(self, cfg: Configure) -> dict[str, Any]:
        if cfg.host_uuid == "appliances":
            if cfg.fault is None:
                self.appliance_faults.pop(cfg.command, None)
            else:
                self.appliance_faults[cfg.command] = cfg.fault
            return {"configured": len(self.appliance_faults)}
        everyone: dict[str, SimHost | SimVrouter] = {**self.hosts, **self.vrouters}
        targets = list(everyone.values()) if cfg.host_uuid == "*" else [everyone[cfg.host_uuid]]
        for host in targets:
            if cfg.fault is None:
                host.faults.pop(cfg.command, None)
            else:
                host.faults[cfg.command] = cfg.fault
                host.calls.pop(cfg.command, None)  # fail_nth counts from now
            if isinstance(host, SimHost):
                host.pretend_uuid = cfg.pretend_uuid
        return {"configured": len(targets)}

    async def _set_vm_state(self, cmd: SetVmState) -> None:
        host = self.hosts[cmd.host_uuid]
        if cmd.state == "Absent":
            host.vms.pop(cmd.vm_uuid, None)
        elif cmd.vm_uuid in host.vms:
            host.vms[cmd.vm_uuid].state = cmd.state
        elif cmd.spec is not None:
            host.vms[cmd.vm_uuid] = SimVm(cmd.spec, cmd.state)
        else:
            raise RingstackError(Sys.INVALID_ARGUMENT, "a VM the host does not have needs its spec")
        if cmd.report:
            report = VmStateReport(
                host_uuid=host.host_uuid, vm_uuid=cmd.vm_uuid, state=cmd.state, reason="simulated"
            )
            await self.server.report(host.host_uuid, REPORT_VM_STATE, report)
