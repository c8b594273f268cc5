"""What the agents are told about a VM: its spec (``VmSpec``, with its NICs' and volumes'), the L2
bridge a NIC plugs into, and the commands that delete its volumes. The one place these are built,
from the database rows (``vm_spec``) or from the plan of a VM being created (``planned_vm_spec``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from bus.errors import not_found
from mgmt.services.network.vxlan import vxlan_spec
from schema.agent import DeleteVolumeCommand, L2Spec, NicSpec, VmSpec, VolumeSpec
from schema.db.network import L2Network, L3Network
from schema.db.storage import PrimaryStorage
from schema.db.vm import VmInstance, VmNic, Volume

if TYPE_CHECKING:
    from mgmt.services.vm.plan import CreatePlan


def bridge_name(l2: Any) -> str:
    """``l2``: an L2Network, or a row with its columns."""
    # Linux interface names have at most 15 characters: br_eth0_4094 fits.
    base = f"br_{l2.physical_interface}"[:10]
    return f"{base}_{l2.vlan}" if l2.vlan else base


def l2_spec(l2: Any, session: Session) -> L2Spec:
    """``l2``: an L2Network, or a row with its columns."""
    if l2.type == "L2VxlanNetwork":  # one bridge per VNI; the VTEPs of every host of its clusters
        vni, vteps = vxlan_spec(session, l2.uuid)
        return L2Spec(
            uuid=l2.uuid,
            type=l2.type,
            physical_interface=l2.physical_interface,
            bridge_name=f"br_vx{vni}",
            vni=vni,
            vteps=vteps,
        )
    return L2Spec(
        uuid=l2.uuid,
        type=l2.type,
        physical_interface=l2.physical_interface,
        vlan=l2.vlan,
        bridge_name=bridge_name(l2),
    )


def delete_by_uuid(
    host_uuid: str, volume_uuid: str, ps_uuid: str | None, ps_url: str | None, ps_type: str | None
) -> DeleteVolumeCommand:
    """Delete a volume whose path is unknown (its create's answer never came) by its uuid."""
    return DeleteVolumeCommand(
        host_uuid=host_uuid,
        volume_uuid=volume_uuid,
        primary_storage_uuid=ps_uuid,
        primary_storage_url=ps_url,
        primary_storage_type=ps_type if ps_type in ("LocalStorage", "NFS", "SharedMountPoint") else None,
    )


def leftover_volumes(session: Session, vm_uuid: str, host_uuid: str) -> list[DeleteVolumeCommand]:
    """What deletes the volumes an interrupted create may have made on ``host_uuid``: by path when
    the database knows it, else by uuid (a create in progress records no path)."""
    rows = session.execute(
        select(Volume.uuid, Volume.install_path, PrimaryStorage.uuid, PrimaryStorage.url, PrimaryStorage.type)
        .outerjoin(PrimaryStorage, PrimaryStorage.uuid == Volume.primary_storage_uuid)
        .where(Volume.vm_instance_uuid == vm_uuid)
    ).all()
    return [
        DeleteVolumeCommand(host_uuid=host_uuid, install_path=path)
        if path
        else delete_by_uuid(host_uuid, uuid, ps_uuid, ps_url, ps_type)
        for uuid, path, ps_uuid, ps_url, ps_type in rows
    ]


def vm_spec(session: Session, vm: VmInstance) -> VmSpec:
    """The agent's view of a VM, from its rows."""
    volumes = session.scalars(
        select(Volume).where(Volume.vm_instance_uuid == vm.uuid).order_by(Volume.device_id)
    ).all()
    nics = session.scalars(
        select(VmNic).where(VmNic.vm_instance_uuid == vm.uuid).order_by(VmNic.device_id)
    ).all()
    return _vm_spec(
        vm.uuid,
        vm.name,
        vm.cpu_num,
        vm.memory_size,
        [volume_spec(v.uuid, v.install_path, v.size, v.device_id or 0, v.type, v.format) for v in volumes],
        [nic_spec(session, n, vm.default_l3_network_uuid) for n in nics],
    )


def planned_vm_spec(plan: CreatePlan) -> VmSpec:
    """The agent's view of a VM being created, from its plan (its rows do not hold the volumes'
    paths yet)."""
    return _vm_spec(
        plan.vm_uuid,
        plan.name,
        plan.cpu,
        plan.memory,
        [volume_spec(v.uuid, v.install_path, v.size, v.device_id, v.type) for v in plan.volumes],
        [
            NicSpec(
                uuid=n.uuid,
                mac=n.mac,
                ip=n.ip,
                netmask=n.netmask,
                gateway=n.gateway,
                l3_network_uuid=n.l3_uuid,
                l2=n.l2,
                device_id=n.device_id,
                default=n.default,
            )
            for n in plan.nics
        ],
    )


def _vm_spec(
    uuid: str, name: str, cpu: int, memory: int, volumes: list[VolumeSpec], nics: list[NicSpec]
) -> VmSpec:
    root = next(v for v in volumes if v.type == "Root")
    return VmSpec(
        uuid=uuid,
        name=name,
        cpu_num=cpu,
        memory_size=memory,
        root_volume=root,
        data_volumes=[v for v in volumes if v.type == "Data"],
        nics=nics,
    )


def volume_spec(
    uuid: str, install_path: str | None, size: int, device_id: int, type_: str, format_: str = "qcow2"
) -> VolumeSpec:
    return VolumeSpec(
        uuid=uuid,
        install_path=install_path or "",
        size=size,
        device_id=device_id,
        type=type_,
        format=format_,
    )


def nic_spec(session: Session, nic: VmNic, default_l3: str | None) -> NicSpec:
    l3 = session.get(L3Network, nic.l3_network_uuid)
    l2 = session.get(L2Network, l3.l2_network_uuid) if l3 else None
    if l2 is None:
        raise not_found("L2 network of NIC", nic.uuid)
    return NicSpec(
        uuid=nic.uuid,
        mac=nic.mac,
        ip=nic.ip,
        netmask=nic.netmask,
        gateway=nic.gateway,
        l3_network_uuid=nic.l3_network_uuid,
        l2=l2_spec(l2, session),
        device_id=nic.device_id,
        default=nic.l3_network_uuid == default_l3,
    )
