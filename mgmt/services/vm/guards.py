"""Whether a pending clean-up about a VM or a volume is still wanted (``mgmt.core.garbage``):
checked in the resource's serial lane just before a recorded undo is sent again, so an old undo
never destroys what a later operation made. Each says: the database does not want it there."""

from __future__ import annotations

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from mgmt.core.garbage import GarbageCollector
from schema.agent import (
    DeleteVolumeCommand,
    DestroyVmCommand,
    NicAttachCommand,
    NicDetachCommand,
    StopVmCommand,
    VolumeAttachCommand,
    VolumeDetachCommand,
)
from schema.db.vm import VmInstance, VmNic, Volume


def vm_not_held_there(session: Session, command: DestroyVmCommand | StopVmCommand) -> bool:
    """Power off or destroy, unless the VM holds that host now (it was started there since)."""
    vm = session.get(VmInstance, command.vm_uuid)
    return vm is None or vm.host_uuid != command.host_uuid


def volume_not_in_use(session: Session, command: DeleteVolumeCommand) -> bool:
    """Delete the file, unless a ready volume of the database is that file."""
    clauses = []
    if command.install_path:
        clauses.append(Volume.install_path == command.install_path)
    if command.volume_uuid:
        clauses.append(Volume.uuid == command.volume_uuid)
    ready = session.scalars(select(Volume.uuid).where(or_(*clauses), Volume.status == "Ready")).first()
    return ready is None


def volume_not_attached(session: Session, command: VolumeDetachCommand) -> bool:
    volume = session.get(Volume, command.volume.uuid)
    return volume is None or volume.vm_instance_uuid != command.vm_uuid


def volume_attached(session: Session, command: VolumeAttachCommand) -> bool:
    volume = session.get(Volume, command.volume.uuid)
    return volume is not None and volume.vm_instance_uuid == command.vm_uuid


def nic_gone(session: Session, command: NicDetachCommand) -> bool:
    nic = session.get(VmNic, command.nic.uuid)
    return nic is None or nic.vm_instance_uuid != command.vm_uuid


def nic_kept(session: Session, command: NicAttachCommand) -> bool:
    nic = session.get(VmNic, command.nic.uuid)
    return nic is not None and nic.vm_instance_uuid == command.vm_uuid


def register(garbage: GarbageCollector) -> None:
    garbage.guard(DestroyVmCommand, vm_not_held_there)
    garbage.guard(StopVmCommand, vm_not_held_there)
    garbage.guard(DeleteVolumeCommand, volume_not_in_use)
    garbage.guard(VolumeDetachCommand, volume_not_attached)
    garbage.guard(VolumeAttachCommand, volume_attached)
    garbage.guard(NicDetachCommand, nic_gone)
    garbage.guard(NicAttachCommand, nic_kept)
