"""The VM service: create, the lifecycle, migration, volumes, NICs, queries."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from bus.envelope import new_uuid
from bus.errors import RingstackError, Sys
from mgmt.core import capacity
from mgmt.core.access import load_for_delete, load_owned, load_visible
from mgmt.core.agents import AgentClient
from mgmt.core.db import Database, create_guard, ownership_lost, uuid_taken
from mgmt.core.events import EventPublisher
from mgmt.core.extensions import ExtensionRegistry
from mgmt.core.flow import Cleanup, Flow
from mgmt.core.garbage import GarbageCollector
from mgmt.core.query import QueryTarget, Relation, run_query
from mgmt.core.quota import check_quota, register_usage
from mgmt.core.service import Account, CallContext, Service, handler
from mgmt.core.stuck import StuckResourceFinder, live_jobs
from mgmt.services.network.ipam import allocate_ip, release_ips_for
from mgmt.services.vm import allocator, guards, specs, usage
from mgmt.services.vm import plan as plans
from mgmt.services.vm.contexts import AttachVolume, Migration, NicOp, StartVm
from mgmt.services.vm.create import CreateVm
from mgmt.services.vm.errors import VmError
from mgmt.services.vm.lifecycle import Operations, VmOp, free_host, hold_host
from mgmt.services.vm.reconcile import TRANSITIONAL, Drift, StuckVms, interrupted_create, reconcile_vm
from mgmt.services.vm.states import VmState
from schema.agent import (
    BridgeReply,
    ConsoleCommand,
    ConsoleReply,
    CreateVolumeCommand,
    DeleteVolumeCommand,
    DestroyVmCommand,
    EmptyReply,
    EnsureBridgeCommand,
    L2Spec,
    MigrateVmCommand,
    NicAttachCommand,
    NicDetachCommand,
    RebootVmCommand,
    StartVmCommand,
    StopVmCommand,
    VmStateReply,
    VolumeAttachCommand,
    VolumeDetachCommand,
)
from schema.agent import (
    VolumeReply as AgentVolumeReply,
)
from schema.api.base import EmptyReply as ApiEmptyReply
from schema.api.base import QueryReply
from schema.api.vm import (
    AttachDataVolumeToVm,
    AttachL3NetworkToVm,
    ChangeInstanceOffering,
    CreateDataVolume,
    CreateVmInstance,
    DeleteDataVolume,
    DestroyVmInstance,
    DetachDataVolumeFromVm,
    DetachL3NetworkFromVm,
    ExpungeVmInstance,
    GetVmConsoleAddress,
    GetVmConsoleAddressReply,
    GetVmMigrationCandidateHosts,
    MigrateVm,
    QueryVmInstance,
    QueryVmNic,
    QueryVolume,
    RebootVmInstance,
    RecoverVmInstance,
    SettleVmInstance,
    SettleVmInstanceReply,
    StartVmInstance,
    StopVmInstance,
    UpdateVmInstance,
    VmInstanceInventory,
    VmNicInventory,
    VmReply,
    VmStateReported,
    VolumeInventory,
    VolumeReply,
)
from schema.db.cluster import Cluster
from schema.db.host import Host
from schema.db.image import Image
from schema.db.network import L3Network
from schema.db.offering import DiskOffering, InstanceOffering
from schema.db.storage import PrimaryStorage
from schema.db.vm import VmInstance, VmNic, Volume
from schema.db.zone import Zone

log = logging.getLogger(__name__)

NICS = QueryTarget.for_model(
    VmNic,
    VmNicInventory,
    name="vmNic",
    relations={
        "vmInstance": Relation("vmInstance", VmNic.vm_instance_uuid, VmInstance.uuid),
        "l3Network": Relation("l3Network", VmNic.l3_network_uuid, L3Network.uuid),
    },
)
VOLUMES = QueryTarget.for_model(
    Volume,
    VolumeInventory,
    name="volume",
    relations={
        "vmInstance": Relation("vmInstance", Volume.vm_instance_uuid, VmInstance.uuid),
        "primaryStorage": Relation("primaryStorage", Volume.primary_storage_uuid, PrimaryStorage.uuid),
        "diskOffering": Relation("diskOffering", Volume.disk_offering_uuid, DiskOffering.uuid),
        "image": Relation("image", Volume.image_uuid, Image.uuid),
    },
)
VMS = QueryTarget.for_model(
    VmInstance,
    VmInstanceInventory,
    name="vmInstance",
    relations={
        "vmNics": Relation(NICS, VmInstance.uuid, VmNic.vm_instance_uuid),
        "allVolumes": Relation(VOLUMES, VmInstance.uuid, Volume.vm_instance_uuid),
        "rootVolume": Relation(VOLUMES, VmInstance.root_volume_uuid, Volume.uuid),
        "zone": Relation("zone", VmInstance.zone_uuid, Zone.uuid),
        "cluster": Relation("cluster", VmInstance.cluster_uuid, Cluster.uuid),
        "host": Relation("host", VmInstance.host_uuid, Host.uuid),
        "image": Relation("image", VmInstance.image_uuid, Image.uuid),
        "instanceOffering": Relation(
            "instanceOffering", VmInstance.instance_offering_uuid, InstanceOffering.uuid
        ),
    },
)


def inventory(session: Session, uuid: str) -> VmInstanceInventory:
    vm = session.get(VmInstance, uuid, populate_existing=True)
    if vm is None:
        raise RingstackError(Sys.NOT_FOUND, f"VM {uuid} not found")
    return VmInstanceInventory.model_validate(vm)


class VmService(Service):
    name = "vm"

    db: Database
    events: EventPublisher
    agents: AgentClient
    extensions: ExtensionRegistry
    garbage: GarbageCollector

    async def start(self) -> None:
        register_usage("vm.num", usage.usage_vms)
        register_usage("vm.cpuNum", usage.usage_cpu)
        register_usage("vm.memorySize", usage.usage_memory)
        register_usage("volume.num", usage.usage_volumes)
        self.creator = CreateVm(self.db, self.agents, self.extensions, self.garbage)
        self.operations = Operations(self.db, self.agents, self.garbage)
        guards.register(self.garbage)
        self.extensions.register(StuckResourceFinder, StuckVms())

    async def _reply(self, uuid: str, action: str) -> VmReply:
        inv = await self.db.run(inventory, uuid)
        await self.events.resource_event("vm", uuid, action, inv.to_wire())
        return VmReply(inventory=inv)

    # ------------------------------------------------------------------ create

    @handler(CreateVmInstance, cancellable=True)
    async def create_vm(self, msg: CreateVmInstance, ctx: CallContext) -> VmReply:
        vm_uuid = ctx.new_resource_uuid(msg)
        if ctx.resumed:
            done = await self._clean_interrupted_create(vm_uuid, ctx.account)
            if done is not None:
                return VmReply(inventory=done)
        # Guard, resolve and reserve run in the chain's first transaction (``plans.prepare``).
        plan = plans.CreatePlan.of_request(msg, vm_uuid, ctx.account, guard=not ctx.resumed)
        try:
            await self.creator.run(plan, ctx.deadline)
        except RingstackError as exc:
            if not ownership_lost(exc):  # else it has not failed: the next owner resumes it
                await self.events.resource_event(
                    "vm", vm_uuid, "createFailed", {"name": msg.name, "error": exc.to_wire()}
                )
            raise
        assert plan.inventory is not None
        await self.events.resource_event("vm", vm_uuid, "created", plan.inventory.to_wire())
        return VmReply(inventory=plan.inventory)

    async def _clean_interrupted_create(
        self, vm_uuid: str, account: Account | None
    ) -> VmInstanceInventory | None:
        """A create whose node died (or lost its ownership): finished already (return it), or undo
        what it left, on the host and in the database, so that it can run again from the start.
        A VM under that uuid that is not the caller's was never this create's: refused, untouched
        (``account`` None: the caller has already checked it may change the VM)."""

        def read(session: Session) -> tuple[str, str | None, list[DeleteVolumeCommand]] | None:
            vm = session.get(VmInstance, vm_uuid)
            if vm is None:
                return None
            if account is not None and vm.owner_account_uuid != account.uuid:
                raise uuid_taken(vm_uuid)
            host = vm.host_uuid or vm.last_host_uuid
            volumes = specs.leftover_volumes(session, vm_uuid, host) if host else []
            return vm.state, host, volumes

        found = await self.db.run(read)
        if found is None:
            return None
        state, host, volumes = found
        if state in (VmState.RUNNING, VmState.STOPPED):
            return await self.db.run(inventory, vm_uuid)
        if host is not None:
            # What failed to be undone stays pending, retried until done (mgmt.core.garbage).
            destroy = Cleanup(DestroyVmCommand(host_uuid=host, vm_uuid=vm_uuid), vm_uuid)
            await self.garbage.clean([destroy, *(Cleanup(c, vm_uuid) for c in volumes)], "create-vm/resume")
        await self.db.run(plans.release, vm_uuid)
        return None

    # ------------------------------------------------------------------ stuck VMs

    @handler(SettleVmInstance)
    async def settle_vm(self, msg: SettleVmInstance, ctx: CallContext) -> SettleVmInstanceReply:
        """See ``SettleVmInstance``: runs on the VM's owner, in its serial lane, like any job."""

        def read(session: Session) -> tuple[str, list[str], bool]:
            vm = load_owned(session, VmInstance, msg.uuid, ctx.account, "VM")
            others = live_jobs(session, msg.uuid, besides=ctx.request_id)
            return vm.state, others, interrupted_create(session, vm)

        before, others, creating = await self.db.run(read)
        if before not in TRANSITIONAL:
            inv = await self.db.run(inventory, msg.uuid)
            return SettleVmInstanceReply(
                from_state=before, to_state=before, action="unchanged", inventory=inv
            )
        if others:
            raise RingstackError(
                Sys.CONFLICT,
                f"VM {msg.uuid} is {before} and job {others[0]} is acting on it: wait for it, or cancel it",
                details={"uuid": msg.uuid, "jobs": others},
            )
        if creating:
            # Its create ended without finishing (its caller was told so): undo it all.
            await self._clean_interrupted_create(msg.uuid, None)  # load_owned checked the caller
            log.warning("VM %s was left %s by an unfinished create: rolled back", msg.uuid, before)
            await self.events.resource_event("vm", msg.uuid, "settled", {"from": before, "to": "Deleted"})
            return SettleVmInstanceReply(from_state=before, to_state="Deleted", action="rolledBack")
        after = await self.operations.settle(msg.uuid, strict=True) or before
        inv = await self.db.run(inventory, msg.uuid)
        forward = {
            VmState.STARTING: VmState.RUNNING,
            VmState.REBOOTING: VmState.RUNNING,
            VmState.MIGRATING: VmState.RUNNING,
            VmState.STOPPING: VmState.STOPPED,
            VmState.DESTROYING: VmState.DESTROYED,
        }
        action = "rolledForward" if forward.get(VmState(before)) == after else "rolledBack"
        log.warning(
            "VM %s was left %s with no job acting on it: now %s (%s)", msg.uuid, before, after, action
        )
        await self.events.resource_event("vm", msg.uuid, "settled", {**inv.to_wire(), "from": before})
        return SettleVmInstanceReply(from_state=before, to_state=after, action=action, inventory=inv)

    # ------------------------------------------------------------------ lifecycle

    @handler(StartVmInstance)
    async def start_vm(self, msg: StartVmInstance, ctx: CallContext) -> VmReply:
        if ctx.resumed:
            await self.operations.settle(msg.uuid)
        state = await self.db.run(lambda s: load_owned(s, VmInstance, msg.uuid, ctx.account, "VM").state)
        if state == VmState.RUNNING:
            return await self._reply(msg.uuid, "unchanged")

        def take(session: Session, vm: VmInstance, op: StartVm) -> None:
            host_uuid = msg.host_uuid or vm.last_host_uuid
            if host_uuid is None:
                raise RingstackError(Sys.INVALID_ARGUMENT, f"VM {vm.uuid} has no host to start on")
            host = session.get(Host, host_uuid)
            if host is None or host.status != "Connected" or host.state != "Enabled":
                raise RingstackError(
                    VmError.NO_HOST_AVAILABLE,
                    f"host {host_uuid} is not connected and enabled; the VM cannot start there",
                )
            hold_host(session, vm, host_uuid)
            op.spec = specs.vm_spec(session, vm)

        async def start(op: StartVm) -> None:
            assert op.spec is not None
            await self.agents.call(StartVmCommand(host_uuid=op.on_host, vm=op.spec), VmStateReply)

        def power_off(op: StartVm) -> list[Cleanup]:
            # A start that failed (or answered too late) may have left it running: power it off.
            command = StopVmCommand(host_uuid=op.on_host, vm_uuid=op.vm_uuid, type="cold")
            return [Cleanup(command, op.vm_uuid)]

        def end(session: Session, vm: VmInstance, op: StartVm) -> None:
            vm.state = VmState.RUNNING

        def untake(session: Session, vm: VmInstance, op: StartVm) -> None:
            free_host(session, vm)

        steps = [Flow("start-on-host", start, cleanup=power_off, undo_failed=True)]
        await self.operations.run(StartVm(msg.uuid, ctx.account), "start", steps, end, take, untake)
        return await self._reply(msg.uuid, "state")

    @handler(StopVmInstance)
    async def stop_vm(self, msg: StopVmInstance, ctx: CallContext) -> VmReply:
        if ctx.resumed:
            await self.operations.settle(msg.uuid)
        state = await self.db.run(lambda s: load_owned(s, VmInstance, msg.uuid, ctx.account, "VM").state)
        if state == VmState.STOPPED:
            return await self._reply(msg.uuid, "unchanged")

        async def stop(op: VmOp) -> None:
            if op.host_uuid is None:
                return
            command = StopVmCommand(
                host_uuid=op.host_uuid, vm_uuid=op.vm_uuid, type=msg.type, timeout=msg.timeout
            )
            await self.agents.call(command, VmStateReply, timeout=msg.timeout + 30)

        def end(session: Session, vm: VmInstance, op: VmOp) -> None:
            free_host(session, vm)
            vm.state = VmState.STOPPED

        # No undo: a stop that failed half-way leaves the VM running or stopped, which the next
        # start or stop (both idempotent) and the host's reports settle.
        await self.operations.run(VmOp(msg.uuid, ctx.account), "stop", [Flow("stop-on-host", stop)], end)
        return await self._reply(msg.uuid, "state")

    @handler(RebootVmInstance)
    async def reboot_vm(self, msg: RebootVmInstance, ctx: CallContext) -> VmReply:
        if ctx.resumed:
            await self.operations.settle(msg.uuid)

        async def reboot(op: VmOp) -> None:
            await self.agents.call(RebootVmCommand(host_uuid=op.on_host, vm_uuid=op.vm_uuid), VmStateReply)

        def end(session: Session, vm: VmInstance, op: VmOp) -> None:
            vm.state = VmState.RUNNING

        steps = [Flow("reboot-on-host", reboot)]
        await self.operations.run(VmOp(msg.uuid, ctx.account), "reboot", steps, end)
        return await self._reply(msg.uuid, "state")

    @handler(DestroyVmInstance)
    async def destroy_vm(self, msg: DestroyVmInstance, ctx: CallContext) -> VmReply:
        if ctx.resumed:
            await self.operations.settle(msg.uuid)
        state = await self.db.run(lambda s: load_owned(s, VmInstance, msg.uuid, ctx.account, "VM").state)
        if state == VmState.DESTROYED:
            return await self._reply(msg.uuid, "unchanged")

        async def destroy(op: VmOp) -> None:
            host = op.host_uuid or op.last_host_uuid
            if host is not None:
                await self.agents.call(DestroyVmCommand(host_uuid=host, vm_uuid=op.vm_uuid), VmStateReply)

        def end(session: Session, vm: VmInstance, op: VmOp) -> None:
            free_host(session, vm)
            vm.state = VmState.DESTROYED

        steps = [Flow("destroy-on-host", destroy)]
        await self.operations.run(VmOp(msg.uuid, ctx.account), "destroy", steps, end)
        return await self._reply(msg.uuid, "destroyed")

    @handler(RecoverVmInstance)
    async def recover_vm(self, msg: RecoverVmInstance, ctx: CallContext) -> VmReply:
        def end(session: Session, vm: VmInstance, op: VmOp) -> None:
            vm.state = VmState.STOPPED

        await self.operations.run(VmOp(msg.uuid, ctx.account), "recover", [], end)
        return await self._reply(msg.uuid, "recovered")

    @handler(ExpungeVmInstance)
    async def expunge_vm(self, msg: ExpungeVmInstance, ctx: CallContext) -> ApiEmptyReply:
        def read(session: Session) -> list[str] | None:
            if load_for_delete(session, VmInstance, msg.uuid, ctx.account, "VM") is None:
                return None
            roots = session.scalars(
                select(Volume.install_path).where(Volume.vm_instance_uuid == msg.uuid, Volume.type == "Root")
            )
            return [p for p in roots if p]

        found = await self.db.run(read)
        if found is None:
            return ApiEmptyReply()  # already gone: a retried expunge succeeds
        paths = found

        async def delete_roots(op: VmOp) -> None:
            if op.last_host_uuid is not None:
                for path in paths:
                    command = DeleteVolumeCommand(host_uuid=op.last_host_uuid, install_path=path)
                    await self.agents.call(command, EmptyReply)

        def end(session: Session, vm: VmInstance, op: VmOp) -> None:
            plans.release(session, vm.uuid, keep_data_volumes=True)

        steps = [Flow("delete-root-volume", delete_roots)]
        await self.operations.run(VmOp(msg.uuid, ctx.account), "expunge", steps, end)
        await self.events.resource_event("vm", msg.uuid, "deleted")
        return ApiEmptyReply()

    @handler(UpdateVmInstance)
    async def update_vm(self, msg: UpdateVmInstance, ctx: CallContext) -> VmReply:
        def update(session: Session) -> None:
            vm = load_owned(session, VmInstance, msg.uuid, ctx.account, "VM")
            if msg.name is not None:
                vm.name = msg.name
            if msg.description is not None:
                vm.description = msg.description

        await self.db.run(update)
        return await self._reply(msg.uuid, "updated")

    @handler(ChangeInstanceOffering)
    async def change_offering(self, msg: ChangeInstanceOffering, ctx: CallContext) -> VmReply:
        def change(session: Session) -> None:
            vm = load_owned(session, VmInstance, msg.vm_instance_uuid, ctx.account, "VM")
            offering = load_visible(
                session, InstanceOffering, msg.instance_offering_uuid, ctx.account, "instance offering"
            )
            if vm.state == VmState.RUNNING:
                raise RingstackError(
                    VmError.INVALID_STATE,
                    f"VM {vm.uuid} is Running; stop it to change its offering (online resize is not supported)",
                    details={"state": vm.state},
                )
            check_quota(session, ctx.account, "vm.cpuNum", max(0, offering.cpu_num - vm.cpu_num))
            check_quota(session, ctx.account, "vm.memorySize", max(0, offering.memory_size - vm.memory_size))
            vm.instance_offering_uuid = offering.uuid
            vm.cpu_num, vm.memory_size = offering.cpu_num, offering.memory_size

        await self.db.run(change)
        return await self._reply(msg.vm_instance_uuid, "updated")

    @handler(GetVmConsoleAddress, serial=False)
    async def console(self, msg: GetVmConsoleAddress, ctx: CallContext) -> GetVmConsoleAddressReply:
        def read(session: Session) -> str:
            vm = load_visible(session, VmInstance, msg.uuid, ctx.account, "VM")
            if vm.state != VmState.RUNNING or vm.host_uuid is None:
                raise RingstackError(
                    VmError.INVALID_STATE, f"VM {vm.uuid} is {vm.state}; its console needs Running"
                )
            return vm.host_uuid

        host = await self.db.run(read)
        reply = await self.agents.call(ConsoleCommand(host_uuid=host, vm_uuid=msg.uuid), ConsoleReply)
        return GetVmConsoleAddressReply(protocol=reply.protocol, hostname=reply.hostname, port=reply.port)

    # ------------------------------------------------------------------ migration

    def _migration_candidates(self, session: Session, vm: VmInstance) -> list[allocator.HostCandidate]:
        storages = session.scalars(
            select(PrimaryStorage)
            .join(Volume, Volume.primary_storage_uuid == PrimaryStorage.uuid)
            .where(Volume.vm_instance_uuid == vm.uuid)
        ).all()
        if any(ps.type == "LocalStorage" for ps in storages):
            return []  # its disks live on its host
        demand = allocator.Demand(
            zone_uuid=vm.zone_uuid,
            cpu=vm.cpu_num,
            memory=vm.memory_size,
            disk=0,
            l2_uuids=frozenset(),
            cluster_uuid=vm.cluster_uuid,
            exclude_hosts=frozenset({vm.host_uuid} if vm.host_uuid else set()),
        )
        return allocator.candidates(session, demand)

    @handler(GetVmMigrationCandidateHosts, serial=False)
    async def migration_candidates(self, msg: GetVmMigrationCandidateHosts, ctx: CallContext) -> QueryReply:
        def find(session: Session) -> list[dict[str, Any]]:
            vm = load_visible(session, VmInstance, msg.vm_instance_uuid, ctx.account, "VM")
            return [
                {
                    "uuid": h.uuid,
                    "clusterUuid": h.cluster_uuid,
                    "availableCpu": h.available_cpu,
                    "availableMemorySize": h.available_memory,
                }
                for h in self._migration_candidates(session, vm)
            ]

        found = await self.db.run(find)
        return QueryReply(inventories=found, total=len(found))

    @handler(MigrateVm)
    async def migrate_vm(self, msg: MigrateVm, ctx: CallContext) -> VmReply:
        if ctx.resumed:
            await self.operations.settle(msg.vm_instance_uuid)

        def take(session: Session, vm: VmInstance, op: Migration) -> None:
            options = [h.uuid for h in self._migration_candidates(session, vm)]
            if msg.host_uuid is not None:
                options = [h for h in options if h == msg.host_uuid]
            for host_uuid in options:
                try:
                    with session.begin_nested():
                        capacity.reserve_host(session, host_uuid, vm.cpu_num, vm.memory_size)
                except RingstackError:
                    continue
                _prepare_migration(session, vm, host_uuid, op)
                return
            raise RingstackError(
                VmError.NO_HOST_AVAILABLE,
                f"no host can take VM {vm.uuid} by migration (same cluster, shared storage, capacity)",
            )

        def untake(session: Session, vm: VmInstance, op: Migration) -> None:
            capacity.release_host(session, op.destination, vm.cpu_num, vm.memory_size)

        async def prepare_destination(op: Migration) -> None:
            # The bridges of the VM's NICs (libvirt refuses a domain whose bridge is missing); a
            # failure leaves the VM running where it is. Bridges are the L2 network's, shared by
            # every VM on it: no undo here (detaching the L2 network from the cluster removes them).
            for l2 in op.l2s:
                try:
                    await self.agents.call(EnsureBridgeCommand(host_uuid=op.destination, l2=l2), BridgeReply)
                except RingstackError as exc:
                    raise RingstackError(
                        VmError.MIGRATION_FAILED,
                        f"VM {op.vm_uuid} cannot migrate to host {op.destination}: the host could not make"
                        f" bridge {l2.bridge_name} of L2 network {l2.uuid}: {exc.message}",
                        details={
                            "step": "prepare destination",
                            "hostUuid": op.destination,
                            "l2NetworkUuid": l2.uuid,
                            "bridgeName": l2.bridge_name,
                        },
                        cause=exc,
                    ) from exc

        async def migrate(op: Migration) -> None:
            # No undo: a migration that fails leaves the VM running at the source (libvirt's
            # guarantee), and one that succeeded is the result.
            command = MigrateVmCommand(
                host_uuid=op.on_host,
                vm_uuid=op.vm_uuid,
                destination_host_uuid=op.destination,
                destination_uri=op.destination_uri,
                storage_shared=op.storage_shared or None,
            )
            await self.agents.call(command, VmStateReply)

        def end(session: Session, vm: VmInstance, op: Migration) -> None:
            free_host(session, vm)  # the source gives its CPU and memory back
            vm.host_uuid = vm.last_host_uuid = op.destination
            vm.state = VmState.RUNNING

        steps = [Flow("prepare-destination", prepare_destination), Flow("migrate", migrate)]
        op = Migration(msg.vm_instance_uuid, ctx.account)
        await self.operations.run(op, "migrate", steps, end, take, untake)
        return await self._reply(msg.vm_instance_uuid, "migrated")

    # ------------------------------------------------------------------ data volumes

    @handler(CreateDataVolume)
    async def create_data_volume(self, msg: CreateDataVolume, ctx: CallContext) -> VolumeReply:
        uuid = ctx.new_resource_uuid(msg)

        def create(session: Session) -> VolumeInventory:
            existing = create_guard(session, Volume, uuid, ctx)
            if existing is not None:
                return VolumeInventory.model_validate(existing)
            size = msg.disk_size
            if msg.disk_offering_uuid is not None:
                size = load_visible(
                    session, DiskOffering, msg.disk_offering_uuid, ctx.account, "disk offering"
                ).disk_size
            if msg.primary_storage_uuid is not None:
                load_visible(
                    session, PrimaryStorage, msg.primary_storage_uuid, ctx.account, "primary storage"
                )
            check_quota(session, ctx.account, "volume.num", 1)
            volume = Volume(
                uuid=uuid,
                name=msg.name,
                description=msg.description,
                owner_account_uuid=ctx.account.uuid,
                primary_storage_uuid=msg.primary_storage_uuid,
                disk_offering_uuid=msg.disk_offering_uuid,
                type="Data",
                size=size,
                status="NotInstantiated",
            )
            session.add(volume)
            session.flush()
            return VolumeInventory.model_validate(volume)

        inv = await self.db.run(create)
        await self.events.resource_event("volume", uuid, "created", inv.to_wire())
        return VolumeReply(inventory=inv)

    @handler(AttachDataVolumeToVm)
    async def attach_volume(self, msg: AttachDataVolumeToVm, ctx: CallContext) -> VolumeReply:
        def take(session: Session, vm: VmInstance, op: AttachVolume) -> None:
            volume = load_owned(session, Volume, msg.volume_uuid, ctx.account, "volume")
            if volume.type != "Data":
                raise RingstackError(Sys.INVALID_ARGUMENT, f"volume {volume.uuid} is a {volume.type} volume")
            if volume.vm_instance_uuid not in (None, vm.uuid):
                raise RingstackError(
                    VmError.VOLUME_IN_USE, f"volume {volume.uuid} is attached to VM {volume.vm_instance_uuid}"
                )
            host = vm.host_uuid or vm.last_host_uuid
            if volume.status == "NotInstantiated":
                root = session.get(Volume, vm.root_volume_uuid) if vm.root_volume_uuid else None
                ps_uuid = volume.primary_storage_uuid or (root.primary_storage_uuid if root else None)
                ps = session.get(PrimaryStorage, ps_uuid) if ps_uuid else None
                if ps is None or host is None:
                    raise RingstackError(
                        Sys.INVALID_ARGUMENT, f"VM {vm.uuid} has no primary storage or host for the volume"
                    )
                capacity.reserve_primary_storage(session, ps.uuid, volume.size)
                volume.primary_storage_uuid = ps.uuid
                op.storage = (ps.uuid, ps.url, ps.type)
            op.device_id = (
                _first_free(session, vm.uuid) if volume.vm_instance_uuid is None else volume.device_id or 1
            )
            op.volume_host = host
            op.running = vm.state == VmState.RUNNING
            op.size, op.install_path = volume.size, volume.install_path

        def untake(session: Session, vm: VmInstance, op: AttachVolume) -> None:
            if op.storage is not None:
                capacity.release_primary_storage(session, op.storage[0], op.size)

        async def create(op: AttachVolume) -> None:
            if op.storage is None:
                return
            assert op.volume_host is not None
            ps_uuid, ps_url, ps_type = op.storage
            command = CreateVolumeCommand(
                host_uuid=op.volume_host,
                volume_uuid=op.volume_uuid,
                primary_storage_uuid=ps_uuid,
                primary_storage_url=ps_url,
                primary_storage_type=ps_type,
                size=op.size,
            )
            op.install_path = (await self.agents.call(command, AgentVolumeReply)).install_path

        def delete_file(op: AttachVolume) -> list[Cleanup]:
            if op.storage is None or op.volume_host is None:
                return []  # it existed before this attach: not ours to delete
            if op.install_path:
                command = DeleteVolumeCommand(host_uuid=op.volume_host, install_path=op.install_path)
            else:  # the create's answer never came, yet it may have made the file: by uuid
                command = specs.delete_by_uuid(op.volume_host, op.volume_uuid, *op.storage)
            return [Cleanup(command, op.vm_uuid)]

        async def attach(op: AttachVolume) -> None:
            if op.running:
                await self.agents.call(
                    VolumeAttachCommand(host_uuid=op.on_host, vm_uuid=op.vm_uuid, volume=op.spec()),
                    EmptyReply,
                )

        def detach(op: AttachVolume) -> list[Cleanup]:
            if not op.running:
                return []
            command = VolumeDetachCommand(host_uuid=op.on_host, vm_uuid=op.vm_uuid, volume=op.spec())
            return [Cleanup(command, op.vm_uuid)]

        def end(session: Session, vm: VmInstance, op: AttachVolume) -> None:
            volume = session.get(Volume, msg.volume_uuid)
            assert volume is not None
            volume.vm_instance_uuid = vm.uuid
            volume.device_id = op.device_id
            volume.install_path = op.install_path
            volume.status = "Ready"
            volume.host_uuid = vm.host_uuid or vm.last_host_uuid

        steps = [
            Flow("create-volume", create, cleanup=delete_file, undo_failed=True),
            Flow("attach-to-vm", attach, cleanup=detach, undo_failed=True),
        ]
        op = AttachVolume(msg.vm_instance_uuid, ctx.account, volume_uuid=msg.volume_uuid)
        await self.operations.run(op, "attachVolume", steps, end, take, untake)
        inv = await self.db.run(lambda s: VolumeInventory.model_validate(s.get(Volume, msg.volume_uuid)))
        await self.events.resource_event("volume", msg.volume_uuid, "attached", inv.to_wire())
        return VolumeReply(inventory=inv)

    @handler(DetachDataVolumeFromVm)
    async def detach_volume(self, msg: DetachDataVolumeFromVm, ctx: CallContext) -> VolumeReply:
        def take(session: Session, vm: VmInstance, op: AttachVolume) -> None:
            volume = load_owned(session, Volume, msg.volume_uuid, ctx.account, "volume")
            if volume.vm_instance_uuid != vm.uuid or volume.type != "Data":
                raise RingstackError(
                    Sys.INVALID_ARGUMENT, f"volume {volume.uuid} is not a data volume of VM {vm.uuid}"
                )
            op.install_path, op.size, op.device_id = volume.install_path, volume.size, volume.device_id or 1
            op.running = vm.state == VmState.RUNNING and vm.host_uuid is not None

        async def detach(op: AttachVolume) -> None:
            if op.running:
                command = VolumeDetachCommand(host_uuid=op.on_host, vm_uuid=op.vm_uuid, volume=op.spec())
                await self.agents.call(command, EmptyReply)

        def attach_again(op: AttachVolume) -> list[Cleanup]:
            if not op.running:
                return []
            command = VolumeAttachCommand(host_uuid=op.on_host, vm_uuid=op.vm_uuid, volume=op.spec())
            return [Cleanup(command, op.vm_uuid)]

        def end(session: Session, vm: VmInstance, op: AttachVolume) -> None:
            volume = session.get(Volume, msg.volume_uuid)
            assert volume is not None
            volume.vm_instance_uuid = None
            volume.device_id = None

        steps = [Flow("detach-from-vm", detach, cleanup=attach_again)]
        op = AttachVolume(msg.vm_instance_uuid, ctx.account, volume_uuid=msg.volume_uuid)
        await self.operations.run(op, "detachVolume", steps, end, take)
        inv = await self.db.run(lambda s: VolumeInventory.model_validate(s.get(Volume, msg.volume_uuid)))
        await self.events.resource_event("volume", msg.volume_uuid, "detached", inv.to_wire())
        return VolumeReply(inventory=inv)

    @handler(DeleteDataVolume)
    async def delete_volume(self, msg: DeleteDataVolume, ctx: CallContext) -> ApiEmptyReply:
        def delete(session: Session) -> tuple[str | None, str | None] | None:
            volume = load_for_delete(session, Volume, msg.uuid, ctx.account, "volume")
            if volume is None:
                return None
            if volume.type != "Data":
                raise RingstackError(Sys.INVALID_ARGUMENT, f"volume {volume.uuid} is a {volume.type} volume")
            if volume.vm_instance_uuid is not None:
                raise RingstackError(
                    VmError.VOLUME_IN_USE, f"volume {volume.uuid} is attached to VM {volume.vm_instance_uuid}"
                )
            if volume.status == "Ready" and volume.primary_storage_uuid:
                capacity.release_primary_storage(session, volume.primary_storage_uuid, volume.size)
            found = (volume.host_uuid, volume.install_path)
            session.delete(volume)
            return found

        found = await self.db.run(delete)
        if found is not None:
            host, path = found
            if host and path:  # a file its host refuses to delete now is deleted later, for sure
                command = DeleteVolumeCommand(host_uuid=host, install_path=path)
                await self.garbage.clean([Cleanup(command, msg.uuid)], "delete-volume")
            await self.events.resource_event("volume", msg.uuid, "deleted")
        return ApiEmptyReply()

    # ------------------------------------------------------------------ NICs

    @handler(AttachL3NetworkToVm)
    async def attach_l3(self, msg: AttachL3NetworkToVm, ctx: CallContext) -> VmReply:
        def take(session: Session, vm: VmInstance, op: NicOp) -> None:
            l3 = load_visible(session, L3Network, msg.l3_network_uuid, ctx.account, "L3 network")
            if any(n.l3_network_uuid == l3.uuid for n in vm.vm_nics):
                raise RingstackError(Sys.CONFLICT, f"VM {vm.uuid} already has a NIC on L3 network {l3.uuid}")
            got = allocate_ip(
                session,
                l3.uuid,
                ctx.account.uuid,
                static_ip=msg.static_ip,
                for_uuid=op.nic_uuid,
                quota_account=ctx.account,
            )
            nic = VmNic(
                uuid=op.nic_uuid,
                vm_instance_uuid=vm.uuid,
                l3_network_uuid=l3.uuid,
                ip=got.ip,
                netmask=got.netmask,
                gateway=got.gateway,
                mac=plans.new_mac(),
                device_id=max((n.device_id for n in vm.vm_nics), default=-1) + 1,
                owner_account_uuid=ctx.account.uuid,
            )
            session.add(nic)
            session.flush()
            op.spec = specs.nic_spec(session, nic, vm.default_l3_network_uuid)
            op.running = vm.state == VmState.RUNNING and vm.host_uuid is not None

        def untake(session: Session, vm: VmInstance, op: NicOp) -> None:
            release_ips_for(session, op.nic_uuid)
            nic = session.get(VmNic, op.nic_uuid)
            if nic is not None:
                session.delete(nic)

        async def prepare_network(op: NicOp) -> None:
            # The L2 network's bridge, shared by every VM on it: no undo (see migrate_vm).
            if op.running:
                await self.agents.call(EnsureBridgeCommand(host_uuid=op.on_host, l2=op.nic.l2), BridgeReply)

        async def attach(op: NicOp) -> None:
            if op.running:
                await self.agents.call(
                    NicAttachCommand(host_uuid=op.on_host, vm_uuid=op.vm_uuid, nic=op.nic), EmptyReply
                )

        def detach(op: NicOp) -> list[Cleanup]:
            if not op.running:
                return []
            return [
                Cleanup(NicDetachCommand(host_uuid=op.on_host, vm_uuid=op.vm_uuid, nic=op.nic), op.vm_uuid)
            ]

        def end(session: Session, vm: VmInstance, op: NicOp) -> None:
            return None

        steps = [
            Flow("prepare-network", prepare_network),
            Flow("attach-nic", attach, cleanup=detach, undo_failed=True),
        ]
        op = NicOp(msg.vm_instance_uuid, ctx.account, nic_uuid=new_uuid())
        await self.operations.run(op, "attachL3", steps, end, take, untake)
        return await self._reply(msg.vm_instance_uuid, "updated")

    @handler(DetachL3NetworkFromVm)
    async def detach_l3(self, msg: DetachL3NetworkFromVm, ctx: CallContext) -> VmReply:
        def take(session: Session, vm: VmInstance, op: NicOp) -> None:
            nic = session.get(VmNic, msg.vm_nic_uuid)
            if nic is None or nic.vm_instance_uuid != vm.uuid:
                raise RingstackError(Sys.NOT_FOUND, f"VM {vm.uuid} has no NIC {msg.vm_nic_uuid}")
            op.spec = specs.nic_spec(session, nic, vm.default_l3_network_uuid)
            op.running = vm.state == VmState.RUNNING and vm.host_uuid is not None

        async def detach(op: NicOp) -> None:
            if op.running:
                command = NicDetachCommand(host_uuid=op.on_host, vm_uuid=op.vm_uuid, nic=op.nic)
                await self.agents.call(command, EmptyReply)

        def attach_again(op: NicOp) -> list[Cleanup]:
            if not op.running:
                return []
            return [
                Cleanup(NicAttachCommand(host_uuid=op.on_host, vm_uuid=op.vm_uuid, nic=op.nic), op.vm_uuid)
            ]

        def end(session: Session, vm: VmInstance, op: NicOp) -> None:
            release_ips_for(session, msg.vm_nic_uuid)
            nic = session.get(VmNic, msg.vm_nic_uuid)
            if nic is not None:
                session.delete(nic)
            if vm.default_l3_network_uuid == (nic.l3_network_uuid if nic else None):
                others = [n for n in vm.vm_nics if n.uuid != msg.vm_nic_uuid]
                vm.default_l3_network_uuid = others[0].l3_network_uuid if others else None

        steps = [Flow("detach-nic", detach, cleanup=attach_again)]
        op = NicOp(msg.vm_instance_uuid, ctx.account, nic_uuid=msg.vm_nic_uuid)
        await self.operations.run(op, "detachL3", steps, end, take)
        return await self._reply(msg.vm_instance_uuid, "updated")

    # ------------------------------------------------------------------ reports

    @handler(VmStateReported)
    async def state_reported(self, msg: VmStateReported, ctx: CallContext) -> ApiEmptyReply:
        actual = None if msg.state == "Absent" else ("Running" if msg.state == "Running" else "Stopped")

        def apply(session: Session) -> Drift | None:
            vm = session.get(VmInstance, msg.uuid, with_for_update=True)
            return None if vm is None else reconcile_vm(session, vm, msg.host_uuid, actual)

        drift = await self.db.run(apply)
        if drift is not None:
            inv = await self.db.run(inventory, msg.uuid)
            await self.events.resource_event(
                "vm", msg.uuid, drift.action, {**inv.to_wire(), "reason": msg.reason}
            )
        return ApiEmptyReply()

    # ------------------------------------------------------------------ queries

    @handler(QueryVmInstance, serial=False)
    async def query_vms(self, msg: QueryVmInstance, ctx: CallContext) -> QueryReply:
        return await self.db.run(run_query, VMS, msg, ctx.account)

    @handler(QueryVolume, serial=False)
    async def query_volumes(self, msg: QueryVolume, ctx: CallContext) -> QueryReply:
        return await self.db.run(run_query, VOLUMES, msg, ctx.account)

    @handler(QueryVmNic, serial=False)
    async def query_nics(self, msg: QueryVmNic, ctx: CallContext) -> QueryReply:
        return await self.db.run(run_query, NICS, msg, ctx.account)


def _first_free(session: Session, vm_uuid: str) -> int:
    used = {v.device_id for v in session.scalars(select(Volume).where(Volume.vm_instance_uuid == vm_uuid))}
    return next(i for i in range(1, 64) if i not in used)


# ---------------------------------------------------------------------- migration helpers

# Storage every host of the cluster sees at the same path: a VM on it may run on any of them.
SHARED_STORAGE_TYPES = frozenset({"NFS", "SharedMountPoint"})


def _prepare_migration(session: Session, vm: VmInstance, destination: str, op: Migration) -> None:
    """What the agent steps of a migration need, read with the destination reserved: the URI of
    the destination's libvirt (its management address, which the source's libvirtd reaches), the
    L2 networks of the VM's NICs (bridges to make there first), and whether all its volumes are on
    shared storage (the source's agent then tells libvirt the migration is safe)."""
    host = session.get(Host, destination)
    if host is None:
        raise RingstackError(Sys.NOT_FOUND, f"host {destination} is gone")
    address = f"[{host.management_ip}]" if ":" in host.management_ip else host.management_ip
    op.destination = destination
    op.destination_uri = f"qemu+tcp://{address}/system"
    nics = session.scalars(select(VmNic).where(VmNic.vm_instance_uuid == vm.uuid).order_by(VmNic.device_id))
    l2s: dict[str, L2Spec] = {}
    for nic in nics:
        spec = specs.nic_spec(session, nic, vm.default_l3_network_uuid).l2
        l2s.setdefault(spec.uuid, spec)
    op.l2s = list(l2s.values())
    types = session.scalars(
        select(PrimaryStorage.type)
        .join(Volume, Volume.primary_storage_uuid == PrimaryStorage.uuid)
        .where(Volume.vm_instance_uuid == vm.uuid)
    ).all()
    op.storage_shared = bool(types) and all(t in SHARED_STORAGE_TYPES for t in types)
