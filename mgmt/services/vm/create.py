"""CreateVmInstance as a flow chain of small steps, each with its rollback.

    reserve (host CPU/memory, primary storage, IPs, quota, rows: one transaction)
    -> create volumes on the host's primary storage (root: an overlay on the image)
    -> prepare the host's network (a bridge per L2)
    -> network services (extension point: DHCP, DNS, ... by their providers)
    -> start on the host (InstantStart only)
    -> done: Running, or Stopped with the host's CPU and memory given back

A failure or the deadline at any step rolls back every completed step in reverse: the VM is
destroyed on the host, its volumes deleted there, the network services released, capacity, IPs
and quota returned and its rows deleted. No VM is left in a transitional state, and no Error
state exists: the VM is Running/Stopped, or gone with the reason in the reply and an event.
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.orm import Session

from mgmt.core import capacity
from mgmt.core.agents import AgentClient
from mgmt.core.db import Database
from mgmt.core.extensions import ExtensionRegistry
from mgmt.core.flow import Cleanup, Flow, FlowChain, Garbage
from mgmt.services.vm import plan as plans
from mgmt.services.vm import specs
from mgmt.services.vm.plan import CreatePlan
from mgmt.services.vm.states import VmState
from schema.agent import (
    BridgeReply,
    CreateVolumeCommand,
    DeleteVolumeCommand,
    DestroyVmCommand,
    EnsureBridgeCommand,
    StartVmCommand,
    VmStateReply,
    VolumeReply,
)
from schema.api.base import WireModel
from schema.api.vm import VmInstanceInventory, VmNicInventory, VolumeInventory


class VmInstantiateExtension:
    """Hooks around a VM's instantiation on a host (ZStack's Pre/PostVmInstantiateResource).
    Network service providers subclass it and register with ``extensions.register``."""

    async def pre_instantiate(self, plan: CreatePlan) -> None:
        """Before the VM starts: e.g. a DHCP entry for each NIC. Raise to fail the create."""

    async def release(self, plan: CreatePlan) -> None:
        """Undo ``pre_instantiate`` (the create is rolling back)."""


def _columns(model: type[WireModel], skip: tuple[str, ...] = ()) -> str:
    return ", ".join(name for name in model.model_fields if name not in skip)


# Written out, not through the ORM: this transaction runs once per VM created, and the ORM's load
# of the VM with its NICs and volumes, then its flush, cost the node several times what these three
# statements do. The version is bumped as the ORM would, so a stale holder of the rows still fails.
_VM_DONE = text(
    "UPDATE vm_instance SET state = :state, host_uuid = CASE WHEN :keep_host THEN host_uuid END, "
    "updated_at = now(), version = version + 1 WHERE uuid = :uuid "
    f"RETURNING {_columns(VmInstanceInventory, ('vm_nics', 'all_volumes'))}"
)
_VOLUME_READY = text(
    "UPDATE volume SET status = 'Ready', install_path = :path, updated_at = now(), version = version + 1 "
    f"WHERE uuid = :uuid RETURNING {_columns(VolumeInventory)}"
)
_NICS = text(f"SELECT {_columns(VmNicInventory)} FROM vm_nic WHERE vm_instance_uuid = :vm ORDER BY device_id")


def _finish(session: Session, plan: CreatePlan) -> None:
    """Running (or Stopped), and the inventory the reply carries, in one transaction."""
    if not plan.start:
        # Created stopped: the host keeps no CPU or memory for it until it starts.
        assert plan.host_uuid is not None
        capacity.release_host(session, plan.host_uuid, plan.cpu, plan.memory)
    state = (VmState.RUNNING if plan.start else VmState.STOPPED).value
    vm = (
        session.execute(_VM_DONE, {"state": state, "keep_host": plan.start, "uuid": plan.vm_uuid})
        .mappings()
        .one()
    )
    volumes = [
        session.execute(_VOLUME_READY, {"path": v.install_path, "uuid": v.uuid}).mappings().one()
        for v in sorted(plan.volumes, key=lambda v: v.device_id)
    ]
    nics = session.execute(_NICS, {"vm": plan.vm_uuid}).mappings().all()
    plan.inventory = VmInstanceInventory.model_validate(
        {**vm, "vm_nics": [dict(n) for n in nics], "all_volumes": [dict(v) for v in volumes]}
    )


class CreateVm:
    def __init__(
        self, db: Database, agents: AgentClient, extensions: ExtensionRegistry, garbage: Garbage
    ) -> None:
        self.db = db
        self.agents = agents
        self.extensions = extensions
        self.garbage = garbage

    def chain(self, plan: CreatePlan) -> FlowChain[CreatePlan]:
        flows: list[Flow[CreatePlan]] = [
            # undo_failed: a reserve whose caller was cancelled may still have committed.
            Flow("reserve", self._reserve, self._release, undo_failed=True),
            # The agent steps undo themselves when they fail half-way: a volume or a VM may exist
            # on the host although its command's answer never came.
            Flow("create-volumes", self._create_volumes, cleanup=self._delete_volumes, undo_failed=True),
            Flow("prepare-network", self._prepare_network),
            Flow(
                "network-services", self._network_services, self._release_network_services, undo_failed=True
            ),
        ]
        if plan.start:
            flows.append(Flow("start-on-host", self._start, cleanup=self._destroy, undo_failed=True))
        flows.append(Flow("done", self._done))
        return FlowChain("create-vm", flows, garbage=self.garbage)

    async def run(self, plan: CreatePlan, deadline: float | None) -> CreatePlan:
        return await self.chain(plan).run(plan, deadline=deadline)

    # ------------------------------------------------------------------ steps

    async def _reserve(self, plan: CreatePlan) -> None:
        await self.db.run(plans.prepare, plan)

    async def _release(self, plan: CreatePlan) -> None:
        # Only what this attempt reserved: a reserve refused because the uuid is taken (by another
        # account's VM, or by this client's own earlier create) must leave that VM alone.
        if plan.reserved:
            await self.db.run(plans.release, plan.vm_uuid)

    async def _create_volumes(self, plan: CreatePlan) -> None:
        assert plan.host_uuid and plan.ps_uuid and plan.ps_url and plan.ps_type
        for volume in plan.volumes:
            root = volume.type == "Root"
            command = CreateVolumeCommand(
                host_uuid=plan.host_uuid,
                volume_uuid=volume.uuid,
                primary_storage_uuid=plan.ps_uuid,
                primary_storage_url=plan.ps_url,
                primary_storage_type=plan.ps_type,
                size=volume.size,
                image_uuid=plan.image_uuid if root else None,
                image_url=plan.image_url if root else None,
            )
            plan.volume_creates_sent.append(volume.uuid)
            reply = await self.agents.call(command, VolumeReply)
            volume.install_path = reply.install_path
            plan.created_on_agent.append(volume.uuid)

    def _delete_volumes(self, plan: CreatePlan) -> list[Cleanup]:
        assert plan.host_uuid
        cleanups = []
        for volume in plan.volumes:
            if volume.uuid not in plan.volume_creates_sent:
                continue
            if volume.uuid in plan.created_on_agent and volume.install_path:
                command = DeleteVolumeCommand(host_uuid=plan.host_uuid, install_path=volume.install_path)
            else:
                # Its create went unanswered, yet may have made the volume: delete it by uuid.
                command = specs.delete_by_uuid(
                    plan.host_uuid, volume.uuid, plan.ps_uuid, plan.ps_url, plan.ps_type
                )
            cleanups.append(Cleanup(command, plan.vm_uuid))
        return cleanups

    async def _prepare_network(self, plan: CreatePlan) -> None:
        assert plan.host_uuid
        seen: set[str] = set()
        for nic in plan.nics:
            if nic.l2.uuid not in seen:
                seen.add(nic.l2.uuid)
                await self.agents.call(EnsureBridgeCommand(host_uuid=plan.host_uuid, l2=nic.l2), BridgeReply)

    async def _network_services(self, plan: CreatePlan) -> None:
        for hook in self.extensions.get(VmInstantiateExtension):
            await hook.pre_instantiate(plan)

    async def _release_network_services(self, plan: CreatePlan) -> None:
        for hook in reversed(self.extensions.get(VmInstantiateExtension)):
            await hook.release(plan)

    async def _start(self, plan: CreatePlan) -> None:
        assert plan.host_uuid
        await self.agents.call(
            StartVmCommand(host_uuid=plan.host_uuid, vm=specs.planned_vm_spec(plan)), VmStateReply
        )
        plan.started_on_agent = True

    def _destroy(self, plan: CreatePlan) -> list[Cleanup]:
        assert plan.host_uuid
        return [Cleanup(DestroyVmCommand(host_uuid=plan.host_uuid, vm_uuid=plan.vm_uuid), plan.vm_uuid)]

    async def _done(self, plan: CreatePlan) -> None:
        await self.db.run(_finish, plan)
