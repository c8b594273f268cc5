"""The database side of making a VM: resolving a request, reserving everything in one transaction,
releasing it all again, and building what the agent needs.

``reserve`` takes the host's CPU and memory, the primary storage's bytes, the IPs, the quota, and
inserts the VM, its NICs and volume rows, all in ONE transaction: either everything is held or
nothing is. ``release`` undoes it in one transaction and is idempotent, so a rollback (or a new
owner cleaning up after a crash) can run it whatever state the VM was left in.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from bus.errors import RingstackError, Sys, not_found
from mgmt.core import capacity
from mgmt.core.access import load_visible
from mgmt.core.quota import check_quota
from mgmt.core.service import Account
from mgmt.services.network.ipam import allocate_ip, release_ips_for
from mgmt.services.vm import allocator
from mgmt.services.vm.states import VmState
from schema.agent import L2Spec, NicSpec, VmSpec, VolumeSpec
from schema.api.vm import CreateVmInstance
from schema.db.cluster import Cluster
from schema.db.image import Image, ImageBackupStorageRef
from schema.db.network import L2Network, L3Network
from schema.db.offering import DiskOffering, InstanceOffering
from schema.db.storage import BackupStorage
from schema.db.vm import VmInstance, VmNic, Volume

NO_HOST_AVAILABLE = "VM.NO_HOST_AVAILABLE"
GiB = 1 << 30


@dataclass
class NicPlan:
    uuid: str
    l3_uuid: str
    l2: L2Spec
    device_id: int
    default: bool
    mac: str = ""
    ip: str | None = None
    netmask: str | None = None
    gateway: str | None = None


@dataclass
class VolumePlan:
    uuid: str
    type: str  # Root | Data
    size: int
    device_id: int
    disk_offering_uuid: str | None = None
    install_path: str | None = None


@dataclass
class CreatePlan:
    """What a CreateVmInstance flow knows; filled step by step."""

    vm_uuid: str
    name: str
    description: str | None
    account: Account
    start: bool
    cpu: int
    memory: int
    offering_uuid: str
    image_uuid: str
    image_url: str
    platform: str
    zone_uuid: str
    nics: list[NicPlan]
    volumes: list[VolumePlan]
    cluster_uuid: str | None = None
    host_uuid: str | None = None
    hypervisor_type: str | None = None
    ps_uuid: str | None = None
    ps_type: str | None = None
    ps_url: str | None = None
    allocator_strategy: str | None = None
    wanted_cluster: str | None = None
    wanted_host: str | None = None
    wanted_ps: str | None = None
    created_on_agent: list[str] = field(default_factory=list)  # volume uuids the agent made
    started_on_agent: bool = False

    @property
    def disk(self) -> int:
        return sum(v.size for v in self.volumes)


def bridge_name(l2: L2Network) -> str:
    # Linux interface names have at most 15 characters: br_eth0_4094 fits.
    base = f"br_{l2.physical_interface}"[:10]
    return f"{base}_{l2.vlan}" if l2.vlan else base


def l2_spec(l2: L2Network) -> L2Spec:
    return L2Spec(
        uuid=l2.uuid,
        type=l2.type,
        physical_interface=l2.physical_interface,
        vlan=l2.vlan,
        bridge_name=bridge_name(l2),
    )


def image_location(session: Session, image_uuid: str) -> str:
    """Where a host fetches the image from: its first ready copy on backup storage."""
    row = session.execute(
        select(BackupStorage.type, BackupStorage.hostname, ImageBackupStorageRef.install_path)
        .join(BackupStorage, BackupStorage.uuid == ImageBackupStorageRef.backup_storage_uuid)
        .where(ImageBackupStorageRef.image_uuid == image_uuid, ImageBackupStorageRef.status == "Ready")
        .limit(1)
    ).first()
    if row is None:
        raise RingstackError(
            Sys.INVALID_ARGUMENT, f"image {image_uuid} has no ready copy on any backup storage"
        )
    bs_type, hostname, path = row
    return f"sftp://{hostname}{path}" if bs_type == "Sftp" else f"file://{path}"


def resolve(session: Session, msg: CreateVmInstance, vm_uuid: str, account: Account) -> CreatePlan:
    """Check every referenced resource and turn the request into a plan (reads only)."""
    offering = load_visible(
        session, InstanceOffering, msg.instance_offering_uuid, account, "instance offering"
    )
    if offering.state != "Enabled":
        raise RingstackError(Sys.INVALID_ARGUMENT, f"instance offering {offering.uuid} is {offering.state}")
    image = load_visible(session, Image, msg.image_uuid, account, "image")
    if image.status != "Ready" or image.state != "Enabled":
        raise RingstackError(
            Sys.INVALID_ARGUMENT, f"image {image.uuid} is {image.status}/{image.state}, not Ready"
        )
    if image.media_type == "DataVolumeTemplate":
        raise RingstackError(Sys.INVALID_ARGUMENT, f"image {image.uuid} is a data volume template")
    l3s = [load_visible(session, L3Network, u, account, "L3 network") for u in msg.l3_network_uuids]
    zones = {l3.zone_uuid for l3 in l3s}
    if len(zones) != 1:
        raise RingstackError(Sys.INVALID_ARGUMENT, "the L3 networks of a VM must be in one zone")
    zone_uuid = zones.pop()
    if msg.zone_uuid is not None and msg.zone_uuid != zone_uuid:
        raise RingstackError(Sys.INVALID_ARGUMENT, f"the L3 networks are not in zone {msg.zone_uuid}")
    for l3 in l3s:
        if l3.state != "Enabled":
            raise RingstackError(Sys.INVALID_ARGUMENT, f"L3 network {l3.uuid} is {l3.state}")
    default_l3 = msg.default_l3_network_uuid or msg.l3_network_uuids[0]
    nics = []
    for index, l3 in enumerate(l3s):
        l2 = session.get(L2Network, l3.l2_network_uuid)
        if l2 is None:
            raise not_found("L2 network", l3.l2_network_uuid)
        nics.append(
            NicPlan(
                uuid=_uuid(), l3_uuid=l3.uuid, l2=l2_spec(l2), device_id=index, default=l3.uuid == default_l3
            )
        )
    if msg.root_disk_offering_uuid:
        root_size = load_visible(
            session, DiskOffering, msg.root_disk_offering_uuid, account, "disk offering"
        ).disk_size
    else:
        root_size = msg.root_disk_size or max(image.size, GiB)
    volumes = [VolumePlan(uuid=_uuid(), type="Root", size=root_size, device_id=0)]
    for index, offering_uuid in enumerate(msg.data_disk_offering_uuids, start=1):
        disk = load_visible(session, DiskOffering, offering_uuid, account, "disk offering")
        volumes.append(VolumePlan(_uuid(), "Data", disk.disk_size, index, disk_offering_uuid=disk.uuid))
    return CreatePlan(
        vm_uuid=vm_uuid,
        name=msg.name,
        description=msg.description,
        account=account,
        start=msg.strategy == "InstantStart",
        cpu=offering.cpu_num,
        memory=offering.memory_size,
        offering_uuid=offering.uuid,
        image_uuid=image.uuid,
        image_url=image_location(session, image.uuid),
        platform=image.platform,
        zone_uuid=zone_uuid,
        nics=nics,
        volumes=volumes,
        allocator_strategy=offering.allocator_strategy,
        wanted_cluster=msg.cluster_uuid,
        wanted_host=msg.host_uuid,
        wanted_ps=msg.primary_storage_uuid_for_root_volume,
    )


def _uuid() -> str:
    return secrets.token_hex(16)


def new_mac() -> str:
    # 0xfa: a locally administered unicast prefix; 40 random bits make collisions vanishingly rare,
    # and the unique constraint on vm_nic.mac catches the rest.
    return "fa:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(5))


def reserve(session: Session, plan: CreatePlan) -> CreatePlan:
    """Hold a host, storage, IPs and quota, and insert the VM's rows: all or nothing."""
    account = plan.account
    check_quota(session, account, "vm.num", 1)
    check_quota(session, account, "vm.cpuNum", plan.cpu)
    check_quota(session, account, "vm.memorySize", plan.memory)
    check_quota(session, account, "volume.num", len(plan.volumes))
    demand = allocator.Demand(
        zone_uuid=plan.zone_uuid,
        cpu=plan.cpu,
        memory=plan.memory,
        disk=plan.disk,
        l2_uuids=frozenset(n.l2.uuid for n in plan.nics),
        cluster_uuid=plan.wanted_cluster,
        host_uuid=plan.wanted_host,
    )
    hosts = allocator.strategy(plan.allocator_strategy).order(allocator.candidates(session, demand))
    for host in hosts:
        storages = allocator.primary_storages(session, host.cluster_uuid, plan.disk, plan.wanted_ps)
        if not storages:
            continue
        try:
            with session.begin_nested():
                capacity.reserve_host(session, host.uuid, plan.cpu, plan.memory)
                ps_uuid, ps_type, ps_url = storages[0]
                capacity.reserve_primary_storage(session, ps_uuid, plan.disk)
        except RingstackError:
            continue  # another create took it meanwhile: try the next one
        cluster = session.get(Cluster, host.cluster_uuid)
        plan.host_uuid, plan.cluster_uuid = host.uuid, host.cluster_uuid
        plan.hypervisor_type = cluster.hypervisor_type if cluster else None
        plan.ps_uuid, plan.ps_type, plan.ps_url = ps_uuid, ps_type, ps_url
        break
    else:
        raise RingstackError(
            NO_HOST_AVAILABLE,
            f"no host in zone {plan.zone_uuid} has {plan.cpu} CPUs, {plan.memory} bytes of memory and "
            f"{plan.disk} bytes of primary storage free, with every L2 network attached",
            details={"cpu": plan.cpu, "memory": plan.memory, "disk": plan.disk, "candidates": len(hosts)},
        )
    session.add(
        VmInstance(
            uuid=plan.vm_uuid,
            name=plan.name,
            description=plan.description,
            owner_account_uuid=account.uuid,
            zone_uuid=plan.zone_uuid,
            cluster_uuid=plan.cluster_uuid,
            host_uuid=plan.host_uuid,
            last_host_uuid=plan.host_uuid,
            instance_offering_uuid=plan.offering_uuid,
            image_uuid=plan.image_uuid,
            root_volume_uuid=plan.volumes[0].uuid,
            default_l3_network_uuid=next(n.l3_uuid for n in plan.nics if n.default),
            hypervisor_type=plan.hypervisor_type or "Simulator",
            platform=plan.platform,
            cpu_num=plan.cpu,
            memory_size=plan.memory,
            state=VmState.STARTING,
            allocator_strategy=plan.allocator_strategy,
        )
    )
    session.flush()
    for nic in plan.nics:
        got = allocate_ip(session, nic.l3_uuid, account.uuid, for_uuid=nic.uuid, quota_account=account)
        nic.ip, nic.netmask, nic.gateway = got.ip, got.netmask, got.gateway
        nic.mac = new_mac()
        session.add(
            VmNic(
                uuid=nic.uuid,
                vm_instance_uuid=plan.vm_uuid,
                l3_network_uuid=nic.l3_uuid,
                ip=nic.ip,
                netmask=nic.netmask,
                gateway=nic.gateway,
                mac=nic.mac,
                device_id=nic.device_id,
                owner_account_uuid=account.uuid,
            )
        )
    for vol in plan.volumes:
        session.add(
            Volume(
                uuid=vol.uuid,
                name=f"{vol.type}-volume-for-{plan.name}"[:255],
                owner_account_uuid=account.uuid,
                vm_instance_uuid=plan.vm_uuid,
                primary_storage_uuid=plan.ps_uuid,
                disk_offering_uuid=vol.disk_offering_uuid,
                image_uuid=plan.image_uuid if vol.type == "Root" else None,
                type=vol.type,
                size=vol.size,
                device_id=vol.device_id,
                status="Creating",
                host_uuid=plan.host_uuid if plan.ps_type == "LocalStorage" else None,
            )
        )
    session.flush()
    return plan


def release(session: Session, vm_uuid: str, keep_data_volumes: bool = False) -> dict[str, Any] | None:
    """Give back everything a VM holds and delete its rows; idempotent. Returns what it freed.

    ``keep_data_volumes``: an expunged VM's data volumes survive it, detached (ZStack's rule), and
    keep their storage; a create that rolls back deletes them with the rest.
    """
    vm = session.get(VmInstance, vm_uuid, with_for_update=True)
    if vm is None:
        return None
    freed: dict[str, Any] = {"host": None, "storage": 0, "ips": []}
    if vm.host_uuid is not None and vm.state not in (VmState.STOPPED, VmState.DESTROYED, VmState.CREATED):
        capacity.release_host(session, vm.host_uuid, vm.cpu_num, vm.memory_size)
        freed["host"] = vm.host_uuid
    volumes = session.scalars(select(Volume).where(Volume.vm_instance_uuid == vm_uuid)).all()
    for volume in volumes:
        if volume.type == "Data" and keep_data_volumes:
            volume.vm_instance_uuid = None
            volume.device_id = None
            continue
        if volume.primary_storage_uuid is not None:
            capacity.release_primary_storage(session, volume.primary_storage_uuid, volume.size)
            freed["storage"] += volume.size
        session.delete(volume)
    nic_uuids = list(session.scalars(select(VmNic.uuid).where(VmNic.vm_instance_uuid == vm_uuid)))
    for nic_uuid in nic_uuids:
        freed["ips"].extend(release_ips_for(session, nic_uuid))
    session.execute(delete(VmNic).where(VmNic.vm_instance_uuid == vm_uuid))
    session.flush()
    session.delete(vm)
    return freed


def vm_spec(session: Session, vm: VmInstance) -> VmSpec:
    """The agent's view of a VM, from its rows."""
    volumes = session.scalars(
        select(Volume).where(Volume.vm_instance_uuid == vm.uuid).order_by(Volume.device_id)
    ).all()
    root = next(v for v in volumes if v.type == "Root")
    nics = session.scalars(
        select(VmNic).where(VmNic.vm_instance_uuid == vm.uuid).order_by(VmNic.device_id)
    ).all()
    return VmSpec(
        uuid=vm.uuid,
        name=vm.name,
        cpu_num=vm.cpu_num,
        memory_size=vm.memory_size,
        root_volume=_volume_spec(root),
        data_volumes=[_volume_spec(v) for v in volumes if v.type == "Data"],
        nics=[nic_spec(session, n, vm.default_l3_network_uuid) for n in nics],
    )


def _volume_spec(volume: Volume) -> VolumeSpec:
    return VolumeSpec(
        uuid=volume.uuid,
        install_path=volume.install_path or "",
        format=volume.format,
        size=volume.size,
        device_id=volume.device_id or 0,
        type=volume.type,
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
        l2=l2_spec(l2),
        device_id=nic.device_id,
        default=nic.l3_network_uuid == default_l3,
    )


def usage_vms(session: Session, account_uuid: str) -> int:
    return int(session.scalar(select(func.count()).where(VmInstance.owner_account_uuid == account_uuid)) or 0)


def usage_cpu(session: Session, account_uuid: str) -> int:
    return int(
        session.scalar(
            select(func.coalesce(func.sum(VmInstance.cpu_num), 0)).where(
                VmInstance.owner_account_uuid == account_uuid
            )
        )
        or 0
    )


def usage_memory(session: Session, account_uuid: str) -> int:
    return int(
        session.scalar(
            select(func.coalesce(func.sum(VmInstance.memory_size), 0)).where(
                VmInstance.owner_account_uuid == account_uuid
            )
        )
        or 0
    )


def usage_volumes(session: Session, account_uuid: str) -> int:
    return int(session.scalar(select(func.count()).where(Volume.owner_account_uuid == account_uuid)) or 0)
