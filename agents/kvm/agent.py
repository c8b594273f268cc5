"""The KVM agent of one host: a coroutine per command of ``schema.agent`` (served by
``agents.common.server.AgentServer``), and VM state reports from libvirt's lifecycle events.

Operations on one VM run one at a time (a lock per VM); different VMs go concurrently. Blocking
work runs in the hypervisor's thread pool.

Reports: a lifecycle event that changes what the management side was last told about a VM is
published as a ``vm_state`` report (shutdown from inside the guest, a crash, a ``virsh`` behind our
back). Events caused by the agent's own commands are not: the command's reply carries the state, and
while a command runs on a VM its events are held back; afterwards the state it replied with is what
the management side knows, so a late event that says the same is dropped too (ZStack's agent keeps
the same rule, "ignore libvirt events of operations in progress").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import libvirt

from agents.kvm import domxml, facts, vms
from agents.kvm.config import AgentConfig
from agents.kvm.flat import FlatDhcp
from agents.kvm.flat_eip import FlatEip
from agents.kvm.hypervisor import Hypervisor
from agents.kvm.network import Bridges
from agents.kvm.secgroup import SecurityGroups
from agents.kvm.storage import Storage
from bus.errors import RingstackError
from schema.agent import (
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
    HypervisorAgent,
    L2Spec,
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
    VmStateReply,
    VmStateReport,
    VmSyncCommand,
    VmSyncReply,
    VolumeAttachCommand,
    VolumeDetachCommand,
    VolumeReply,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
Reporter = Callable[[VmStateReport], Awaitable[None]]
# How often a wait for a state re-reads it even without an event (an event can be missed when the
# libvirt connection is reopened); the wait itself ends on the event.
STATE_POLL = 0.5


class KvmAgent(HypervisorAgent):
    def __init__(self, config: AgentConfig, *, reporter: Reporter | None = None) -> None:
        self.config = config
        self.host_uuid = config.host_uuid
        self.reporter = reporter
        self.hypervisor = Hypervisor(
            config.libvirt_uri, workers=config.workers, on_lifecycle=self._on_lifecycle
        )
        self.storage = Storage(config.mount_dir, download_timeout=config.download_timeout)
        self.bridges = Bridges(config.netns)
        self.secgroups = SecurityGroups(config.netns)
        self.flat = FlatDhcp(config.flat_dir, config.netns)
        self.flat_eip = FlatEip(f"{config.flat_dir}/eip", config.netns)
        self._secgroup_lock = asyncio.Lock()  # one table read-compare-restore at a time
        self.version = facts.agent_version()
        self.started = time.monotonic()
        self._locks: dict[str, asyncio.Lock] = {}
        self._busy: set[str] = set()
        self._known: dict[str, str] = {}  # VM uuid -> the state the management side was last told
        self._changed: dict[str, asyncio.Event] = {}
        self._network_lock = asyncio.Lock()
        self._reports: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        await self.hypervisor.start()
        if self.config.console_log_dir:
            # Made now, not at the first start here: a VM migrating in logs to the same path (its
            # domain XML names it), and libvirt refuses the migration when the directory is missing.
            log_dir = Path(self.config.console_log_dir)
            await self._blocking(log_dir.mkdir, 0o755, True, True, action=f"create {log_dir}")
        for vm in await self.hypervisor.call(vms.list_vms, "list VMs"):
            self._known[vm.uuid] = vm.state

    async def close(self) -> None:
        for task in list(self._reports):
            task.cancel()
        await self.hypervisor.close()

    # ------------------------------------------------------------------ helpers

    @contextlib.asynccontextmanager
    async def _vm_op(self, vm_uuid: str) -> AsyncIterator[None]:
        lock = self._locks.setdefault(vm_uuid, asyncio.Lock())
        async with lock:
            self._busy.add(vm_uuid)
            try:
                yield
            finally:
                self._busy.discard(vm_uuid)

    def _replied(self, vm_uuid: str, state: str, changed: bool) -> VmStateReply:
        """The reply of a VM command; what it says is now what the management side knows."""
        # (The VM's lock stays even when it is gone: a command may be waiting on it right now.)
        self._known[vm_uuid] = state
        return VmStateReply(vm_uuid=vm_uuid, state=state, changed=changed)

    async def _state(self, vm_uuid: str) -> str:
        return await self.hypervisor.call(lambda c: vms.state(c, vm_uuid), f"read the state of VM {vm_uuid}")

    async def _wait_state(self, vm_uuid: str, states: set[str], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            changed = self._changed.setdefault(vm_uuid, asyncio.Event())
            changed.clear()
            if await self._state(vm_uuid) in states:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), min(STATE_POLL, remaining))

    async def _blocking(self, fn: Callable[..., T], *args: object, action: str) -> T:
        """Run disk or network work in the pool; an OS error says what failed, not SYS.INTERNAL."""
        try:
            return await self.hypervisor.blocking(fn, *args)
        except OSError as exc:
            raise RingstackError(AgentErrors.HYPERVISOR_ERROR, f"{action}: {exc}") from None

    async def _ensure_bridge(self, l2: L2Spec) -> bool:
        async with self._network_lock:  # ip link changes of two commands must not interleave
            return await self._blocking(
                self.bridges.ensure, l2, self.host_uuid, action=f"ensure bridge {l2.bridge_name}"
            )

    # ------------------------------------------------------------------ lifecycle events

    def _on_lifecycle(self, name: str, event: int, detail: int) -> None:
        if not domxml.VM_NAME.match(name):
            return
        state, reason = vms.event_state(event, detail)
        changed = self._changed.get(name)
        if changed is not None:
            changed.set()
        if state is None or name in self._busy or self._known.get(name) == state:
            return
        self._known[name] = state
        log.info("VM %s is now %s (%s)", name, state, reason)
        if self.reporter is not None:
            report = VmStateReport(host_uuid=self.host_uuid, vm_uuid=name, state=state, reason=reason)
            task = asyncio.create_task(self._report(report))
            self._reports.add(task)
            task.add_done_callback(self._reports.discard)

    async def _report(self, report: VmStateReport) -> None:
        assert self.reporter is not None
        try:
            await self.reporter(report)
        except RingstackError as exc:
            # The management side re-reads every VM (vm.sync) after a reconnect; nothing is lost.
            log.warning("could not report VM %s %s: %s", report.vm_uuid, report.state, exc)

    # ------------------------------------------------------------------ host

    async def connect(self, cmd: ConnectCommand) -> ConnectReply:
        host_facts = await self.hypervisor.call(
            lambda c: facts.collect(c, self.config.domain_type), "collect host facts"
        )
        listed = await self.hypervisor.call(vms.list_vms, "list VMs")
        for vm in listed:
            self._known[vm.uuid] = vm.state
        return ConnectReply(
            host_uuid=self.host_uuid,
            agent_version=self.version,
            facts=host_facts,
            vms=listed,
        )

    async def ping(self, cmd: PingCommand) -> PingReply:
        return PingReply(
            host_uuid=self.host_uuid, agent_version=self.version, uptime=time.monotonic() - self.started
        )

    # ------------------------------------------------------------------ VMs

    async def vm_start(self, cmd: StartVmCommand) -> VmStateReply:
        spec = cmd.vm
        async with self._vm_op(spec.uuid):
            changed = False
            for nic in spec.nics:
                changed = await self._ensure_bridge(nic.l2) or changed
            console_log = None
            if self.config.console_log_dir:
                log_dir = Path(self.config.console_log_dir)
                await self._blocking(log_dir.mkdir, 0o755, True, True, action=f"create {log_dir}")
                console_log = str(log_dir / f"{spec.uuid}.log")
            xml = domxml.domain_xml(
                spec,
                domain_type=self.config.domain_type,
                vnc_listen=self.config.vnc_listen,
                console_log=console_log,
            )
            started = await self.hypervisor.call(
                lambda c: vms.start(c, spec.uuid, xml), f"start VM {spec.uuid}"
            )
            return self._replied(spec.uuid, "Running", started or changed)

    async def vm_stop(self, cmd: StopVmCommand) -> VmStateReply:
        async with self._vm_op(cmd.vm_uuid):
            before = await self._state(cmd.vm_uuid)
            state = await self._stop(cmd.vm_uuid, cmd.type, cmd.timeout)
            return self._replied(cmd.vm_uuid, state, before in ("Running", "Paused"))

    async def _stop(self, vm_uuid: str, how: str, timeout: float) -> str:
        state = await self._state(vm_uuid)
        if state == "Absent":
            return "Absent"
        if state in ("Stopped", "Crashed"):
            return "Stopped"
        if how == "grace" and state == "Running":  # a paused guest cannot see the power button
            asked = await self.hypervisor.call(
                lambda c: vms.request_shutdown(c, vm_uuid), f"shut down VM {vm_uuid}"
            )
            if asked and await self._wait_state(vm_uuid, {"Stopped", "Crashed", "Absent"}, timeout):
                return "Stopped"
            log.info("VM %s did not shut down within %.0f s; powering it off", vm_uuid, timeout)
        await self.hypervisor.call(lambda c: vms.destroy(c, vm_uuid), f"power off VM {vm_uuid}")
        return "Stopped"

    async def vm_reboot(self, cmd: RebootVmCommand) -> VmStateReply:
        # A stop (ACPI, then forced after the configured grace) and a start of the stored definition:
        # the reply then says for sure that the guest went down and came back.
        vm_uuid = cmd.vm_uuid
        async with self._vm_op(vm_uuid):
            if await self._state(vm_uuid) == "Absent":
                raise RingstackError(
                    AgentErrors.VM_NOT_FOUND, f"VM {vm_uuid} is not on host {self.host_uuid}"
                )
            await self._stop(vm_uuid, "grace", self.config.stop_timeout)
            state = await self.hypervisor.call(
                lambda c: vms.create(c, vm_uuid, self.host_uuid), f"start VM {vm_uuid} again"
            )
            return self._replied(vm_uuid, state, True)

    async def vm_destroy(self, cmd: DestroyVmCommand) -> VmStateReply:
        async with self._vm_op(cmd.vm_uuid):
            gone = await self.hypervisor.call(
                lambda c: vms.undefine(c, cmd.vm_uuid), f"destroy VM {cmd.vm_uuid}"
            )
            return self._replied(cmd.vm_uuid, "Absent", gone)

    async def vm_migrate(self, cmd: MigrateVmCommand) -> VmStateReply:
        """Live-migrate the VM to the destination's libvirt (see ``vms.migrate``); the reply is its
        state there. Idempotent: a VM no longer here is looked for at the destination, so a repeated
        command (say after a lost reply) answers as the first did. Preparing the destination (its
        bridges, the storage mounted at the same path) is the management side's part."""
        vm_uuid, uri = cmd.vm_uuid, cmd.destination_uri
        shared = self.config.migration_shared_paths
        vouched = bool(cmd.storage_shared)  # the management side knows every volume is shared
        async with self._vm_op(vm_uuid):
            state = await self.hypervisor.call(
                lambda c: vms.migrate(c, vm_uuid, uri, shared, storage_shared=vouched),
                f"migrate VM {vm_uuid} to {uri}",
            )
            changed = state is not None
            if state is None:  # not here: a repeated migration finds it at the destination
                state = await self.hypervisor.call(
                    lambda c: vms.state_at(uri, vm_uuid), f"look for VM {vm_uuid} at {uri}"
                )
                if state == "Absent":
                    raise RingstackError(
                        AgentErrors.VM_NOT_FOUND,
                        f"VM {vm_uuid} is neither on host {self.host_uuid} nor at {uri}",
                    )
            self._known[vm_uuid] = "Absent"  # it left this host: its late events here say nothing new
            return VmStateReply(vm_uuid=vm_uuid, state=state, changed=changed)

    async def _device(
        self, vm_uuid: str, action: str, fn: Callable[[libvirt.virConnect, libvirt.virDomain], bool]
    ) -> EmptyReply:
        async with self._vm_op(vm_uuid):

            def run(conn: libvirt.virConnect) -> bool:
                return fn(conn, vms.require(conn, vm_uuid, self.host_uuid))

            return EmptyReply(changed=await self.hypervisor.call(run, f"{action} of VM {vm_uuid}"))

    async def vm_attach_volume(self, cmd: VolumeAttachCommand) -> EmptyReply:
        disk = domxml.disk_element(cmd.volume)
        return await self._device(
            cmd.vm_uuid, f"attach volume {cmd.volume.uuid}", lambda c, d: vms.attach(c, d, disk, None)
        )

    async def vm_detach_volume(self, cmd: VolumeDetachCommand) -> EmptyReply:
        disk = domxml.disk_element(cmd.volume)
        return await self._device(
            cmd.vm_uuid, f"detach volume {cmd.volume.uuid}", lambda c, d: vms.detach(c, d, disk)
        )

    async def vm_attach_nic(self, cmd: NicAttachCommand) -> EmptyReply:
        bridged = await self._ensure_bridge(cmd.nic.l2)
        nic = domxml.nic_element(cmd.nic)
        reply = await self._device(
            cmd.vm_uuid, f"attach NIC {cmd.nic.mac}", lambda c, d: vms.attach(c, d, nic, None)
        )
        return EmptyReply(changed=reply.changed or bridged)

    async def vm_detach_nic(self, cmd: NicDetachCommand) -> EmptyReply:
        nic = domxml.nic_element(cmd.nic)
        return await self._device(
            cmd.vm_uuid, f"detach NIC {cmd.nic.mac}", lambda c, d: vms.detach(c, d, nic)
        )

    async def vm_sync(self, cmd: VmSyncCommand) -> VmSyncReply:
        listed = await self.hypervisor.call(vms.list_vms, "list VMs")
        for vm in listed:
            if vm.uuid not in self._busy:
                self._known[vm.uuid] = vm.state
        return VmSyncReply(vms=listed)

    async def vm_console(self, cmd: ConsoleCommand) -> ConsoleReply:
        def port(conn: libvirt.virConnect) -> int | None:
            dom = vms.require(conn, cmd.vm_uuid, self.host_uuid)
            return domxml.vnc_port(dom.XMLDesc(0)) if dom.isActive() else None

        vnc = await self.hypervisor.call(port, f"read the console of VM {cmd.vm_uuid}")
        if vnc is None:
            raise RingstackError(
                AgentErrors.HYPERVISOR_ERROR,
                f"VM {cmd.vm_uuid} has no VNC console now (it is not running, has none, or the"
                " hypervisor driver assigns no port)",
            )
        return ConsoleReply(
            protocol="vnc", hostname=self.config.console_hostname or socket.gethostname(), port=vnc
        )

    # ------------------------------------------------------------------ storage, network

    async def volume_create(self, cmd: CreateVolumeCommand) -> VolumeReply:
        return await self._blocking(
            self.storage.create_volume, cmd, action=f"create volume {cmd.volume_uuid}"
        )

    async def volume_delete(self, cmd: DeleteVolumeCommand) -> EmptyReply:
        what = cmd.install_path or f"volume {cmd.volume_uuid}"
        deleted = await self._blocking(self.storage.delete_volume, cmd, action=f"delete {what}")
        return EmptyReply(changed=deleted)

    async def network_ensure_bridge(self, cmd: EnsureBridgeCommand) -> BridgeReply:
        changed = await self._ensure_bridge(cmd.l2)
        return BridgeReply(bridge_name=cmd.l2.bridge_name, changed=changed)

    async def network_delete_bridge(self, cmd: DeleteBridgeCommand) -> EmptyReply:
        async with self._network_lock:
            deleted = await self._blocking(
                self.bridges.delete, cmd.l2, action=f"delete bridge {cmd.l2.bridge_name}"
            )
        return EmptyReply(changed=deleted)

    # ------------------------------------------------------------------ security groups

    async def securitygroup_apply(self, cmd: ApplySecurityGroupRulesCommand) -> SecurityGroupReply:
        async with self._secgroup_lock:
            return await self._blocking(
                self.secgroups.apply, cmd.nics, cmd.groups, cmd.members, action="apply security groups"
            )

    async def securitygroup_update_members(
        self, cmd: UpdateSecurityGroupMembersCommand
    ) -> SecurityGroupReply:
        async with self._secgroup_lock:
            return await self._blocking(
                self.secgroups.update_members, cmd.members, action="update security group members"
            )

    # ------------------------------------------------------------------ flat networks

    async def flat_apply_dhcp(self, cmd: ApplyFlatDhcpCommand) -> FlatDhcpReply:
        async with self._network_lock:
            for l3 in cmd.l3_networks:
                if not await self._blocking(self._has_bridge, l3.bridge_name, action="read links"):
                    raise RingstackError(
                        AgentErrors.HYPERVISOR_ERROR,
                        f"bridge {l3.bridge_name} of L3 {l3.l3_network_uuid} is missing",
                    )
            return await self._blocking(self.flat.apply, cmd.l3_networks, action="apply flat DHCP")

    async def flat_apply_eip(self, cmd: ApplyFlatEipCommand) -> FlatEipReply:
        async with self._network_lock:
            links = await self._blocking(self.bridges.links, action="read links")
            for eip in cmd.eips:
                for bridge in (eip.public_bridge, eip.guest_bridge):
                    if bridge not in links:
                        raise RingstackError(
                            AgentErrors.HYPERVISOR_ERROR, f"bridge {bridge} of EIP {eip.vip_ip} is missing"
                        )
            return await self._blocking(self.flat_eip.apply, cmd.eips, action="apply flat EIPs")

    def _has_bridge(self, name: str) -> bool:
        return name in self.bridges.links()
