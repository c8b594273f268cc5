"""Making the database agree with what a host actually runs.

The hypervisor is the truth about whether a VM runs. The rules, each change published as an event:

| database says | host says | becomes | event |
|---|---|---|---|
| Running, Unknown, or a transition | Running | Running (holding the host) | ``vm.<uuid>.state`` |
| Stopped / Created, last on this host | Running | Running, the host's capacity taken | ``vm.<uuid>.startedOutside`` |
| Running or Unknown on this host | Stopped, Crashed or absent | Stopped, capacity given back | ``vm.<uuid>.stoppedOutside`` |
| (no such VM) | Running | left alone: an operator decides | ``host.<uuid>.strayVm`` |

Destroyed VMs stay Destroyed; a Destroyed VM that a host still runs is a stray too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import or_, select, text
from sqlalchemy.orm import Session

from bus.errors import RingstackError
from mgmt.core.stuck import StuckResource, StuckResourceFinder, no_live_job
from mgmt.services.vm.lifecycle import free_host, hold_host
from mgmt.services.vm.states import ON_HOST, VmState
from schema.db.vm import VmInstance, Volume


@dataclass(frozen=True)
class Drift:
    kind: str  # "vm" or "host"
    uuid: str
    action: str  # state | startedOutside | stoppedOutside | strayVm
    detail: dict[str, str]


def reconcile_host(session: Session, host_uuid: str, actual: Mapping[str, str]) -> list[Drift]:
    """Apply the rules to every VM the database or the host associates with ``host_uuid``."""
    drifts: list[Drift] = []
    vms = session.scalars(
        select(VmInstance)
        .where(or_(VmInstance.host_uuid == host_uuid, VmInstance.last_host_uuid == host_uuid))
        .with_for_update()
    ).all()
    known = set()
    for vm in vms:
        known.add(vm.uuid)
        drift = reconcile_vm(session, vm, host_uuid, actual.get(vm.uuid))
        if drift is not None:
            drifts.append(drift)
    for vm_uuid, state in actual.items():
        if vm_uuid not in known and state == "Running" and session.get(VmInstance, vm_uuid) is None:
            drifts.append(Drift("host", host_uuid, "strayVm", {"vmUuid": vm_uuid}))
    return drifts


def reconcile_vm(session: Session, vm: VmInstance, host_uuid: str, actual: str | None) -> Drift | None:
    before = vm.state
    here = vm.host_uuid == host_uuid
    if vm.state in (VmState.DESTROYED, VmState.EXPUNGING):
        return None
    if actual == "Running":
        if here and vm.state != VmState.RUNNING and vm.state in ON_HOST:
            vm.state = VmState.RUNNING
            return Drift("vm", vm.uuid, "state", {"from": before, "to": vm.state})
        if not here and vm.host_uuid is None and vm.last_host_uuid == host_uuid:
            # Over-committed if this fails: record it running all the same, the host does run it.
            with contextlib.suppress(RingstackError):
                hold_host(session, vm, host_uuid)
            vm.host_uuid = host_uuid
            vm.state = VmState.RUNNING
            return Drift("vm", vm.uuid, "startedOutside", {"from": before, "to": vm.state})
        return None
    if here and vm.state in ON_HOST:
        free_host(session, vm)
        vm.state = VmState.STOPPED
        return Drift(
            "vm", vm.uuid, "stoppedOutside", {"from": before, "to": vm.state, "host": actual or "Absent"}
        )
    return None


def mark_unknown(session: Session, host_uuid: str) -> list[Drift]:
    """The host stopped answering: its running VMs' state is Unknown (they keep its capacity)."""
    drifts = []
    for vm in session.scalars(select(VmInstance).where(VmInstance.host_uuid == host_uuid).with_for_update()):
        if vm.state in ON_HOST and vm.state != VmState.UNKNOWN:
            drifts.append(Drift("vm", vm.uuid, "state", {"from": vm.state, "to": VmState.UNKNOWN}))
            vm.state = VmState.UNKNOWN
    return drifts


# ---------------------------------------------------------------------- stuck VMs

TRANSITIONAL = frozenset(
    {
        VmState.STARTING,
        VmState.STOPPING,
        VmState.REBOOTING,
        VmState.MIGRATING,
        VmState.DESTROYING,
        VmState.EXPUNGING,
    }
)

_STUCK_VMS = text(
    "SELECT v.uuid, v.state, v.updated_at FROM vm_instance v WHERE v.state = ANY(:states) AND "
    + no_live_job("v.uuid")
)


class StuckVms(StuckResourceFinder):
    """VMs in a transitional state that no job is moving: settled by ``SettleVmInstance``."""

    resource_type = "VmInstance"
    settle_with = "SettleVmInstance"

    def find(self, session: Session) -> list[StuckResource]:
        rows = session.execute(_STUCK_VMS, {"states": sorted(TRANSITIONAL)})
        return [StuckResource(self.resource_type, u, s, t, self.settle_with) for u, s, t in rows]


def interrupted_create(session: Session, vm: VmInstance) -> bool:
    """A VM whose create never finished: Starting, its root volume still being created."""
    if vm.state != VmState.STARTING or vm.root_volume_uuid is None:
        return False
    root = session.get(Volume, vm.root_volume_uuid)
    return root is not None and root.status == "Creating"
