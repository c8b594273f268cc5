"""The plan of a VM create, and the database side of making a VM: resolving a request, reserving
everything in one transaction, releasing it all again. (What the agent is told: ``specs``.)

``reserve`` takes the host's CPU and memory, the primary storage's bytes, the IPs, the quota, and
inserts the VM, its NICs and volume rows, all in ONE transaction: either everything is held or
nothing is. ``release`` undoes it in one transaction and is idempotent, so a rollback (or a new
owner cleaning up after a crash) can run it whatever state the VM was left in.
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, cast

from sqlalchemy import Table, TextClause, delete, insert, select, text
from sqlalchemy.orm import Session

from bus.errors import RingstackError, Sys, not_found
from mgmt.core import capacity
from mgmt.core.access import load_visible
from mgmt.core.db import uuid_taken
from mgmt.core.quota import check_quota
from mgmt.core.service import Account
from mgmt.services.network.ipam import allocate_ip, release_ips_for
from mgmt.services.vm import allocator
from mgmt.services.vm.errors import VmError
from mgmt.services.vm.specs import l2_spec
from mgmt.services.vm.states import VmState
from schema.agent import L2Spec
from schema.api.vm import CreateVmInstance, VmInstanceInventory
from schema.db.image import Image
from schema.db.network import L3Network
from schema.db.offering import DiskOffering, InstanceOffering
from schema.db.vm import VmInstance, VmNic, Volume

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
    """What a CreateVmInstance flow knows; filled step by step: the request first, then what the
    reserve transaction resolved and took (``prepare``), then what the agents made."""

    vm_uuid: str
    name: str
    description: str | None
    account: Account
    start: bool
    request: CreateVmInstance | None = None  # resolved by ``prepare`` in the reserve transaction
    guard: bool = True  # fail with SYS.CONFLICT if the VM's uuid is taken (not for a resumed job)
    cpu: int = 0
    memory: int = 0
    offering_uuid: str = ""
    image_uuid: str = ""
    image_url: str = ""
    platform: str = ""
    zone_uuid: str = ""
    nics: list[NicPlan] = field(default_factory=list)
    volumes: list[VolumePlan] = field(default_factory=list)
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
    volume_creates_sent: list[str] = field(default_factory=list)  # volume uuids asked of the agent
    created_on_agent: list[str] = field(default_factory=list)  # volume uuids the agent made
    started_on_agent: bool = False
    # Set by ``prepare`` once this attempt's own rows are written: the reserve step's rollback
    # releases the VM only then, never the holder of a uuid that refused this attempt (issue #11).
    reserved: bool = False
    inventory: VmInstanceInventory | None = None  # read in the transaction that makes it Running

    @classmethod
    def of_request(cls, msg: CreateVmInstance, vm_uuid: str, account: Account, *, guard: bool) -> CreatePlan:
        return cls(
            vm_uuid=vm_uuid,
            name=msg.name,
            description=msg.description,
            account=account,
            start=msg.strategy == "InstantStart",
            request=msg,
            guard=guard,
        )

    @property
    def disk(self) -> int:
        return sum(v.size for v in self.volumes)


_IMAGE_LOCATION = text(
    "SELECT bs.type, bs.hostname, r.install_path FROM image_backup_storage_ref r "
    "JOIN backup_storage bs ON bs.uuid = r.backup_storage_uuid "
    "WHERE r.image_uuid = :image AND r.status = 'Ready' LIMIT 1"
)


def image_location(session: Session, image_uuid: str) -> str:
    """Where a host fetches the image from: its first ready copy on backup storage."""
    row = session.execute(_IMAGE_LOCATION, {"image": image_uuid}).first()
    if row is None:
        raise RingstackError(
            Sys.INVALID_ARGUMENT, f"image {image_uuid} has no ready copy on any backup storage"
        )
    bs_type, hostname, path = row
    return f"sftp://{hostname}{path}" if bs_type == "Sftp" else f"file://{path}"


@functools.cache
def _columns_by_uuid(table: str, columns: tuple[str, ...]) -> TextClause:
    return text(f"SELECT {', '.join(columns)} FROM {table} WHERE uuid = :uuid")


def _load(
    session: Session, model: type[Any], uuid: str, account: Account, kind: str, columns: tuple[str, ...]
) -> Any:
    """``columns`` of the row if ``account`` may see it (else ``SYS.NOT_FOUND``), as attributes.

    Admins see every row (``mgmt.core.access``), so for them one SELECT of just these columns
    replaces the ORM load of the whole row and its eager relationships, on every create. Other
    accounts go through ``load_visible`` and its sharing rules."""
    if not account.is_admin:
        return load_visible(session, model, uuid, account, kind)
    row = session.execute(_columns_by_uuid(model.__tablename__, columns), {"uuid": uuid}).first()
    if row is None:
        raise not_found(kind, uuid)
    return row


_OFFERING = ("uuid", "state", "cpu_num", "memory_size", "allocator_strategy")
_IMAGE = ("uuid", "status", "state", "media_type", "size", "platform")
_L2 = ("uuid", "type", "physical_interface", "vlan")


def resolve(session: Session, msg: CreateVmInstance, vm_uuid: str, account: Account) -> CreatePlan:
    """Check every referenced resource and turn the request into a plan (reads only)."""
    plan = CreatePlan.of_request(msg, vm_uuid, account, guard=False)
    _resolve_into(session, plan, msg)
    return plan


def _resolve_into(session: Session, plan: CreatePlan, msg: CreateVmInstance) -> list[L3Network]:
    """Fill ``plan`` from the request; returns the L3 rows it loaded."""
    account = plan.account
    offering = _load(
        session, InstanceOffering, msg.instance_offering_uuid, account, "instance offering", _OFFERING
    )
    if offering.state != "Enabled":
        raise RingstackError(Sys.INVALID_ARGUMENT, f"instance offering {offering.uuid} is {offering.state}")
    image = _load(session, Image, msg.image_uuid, account, "image", _IMAGE)
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
        l2 = session.execute(_columns_by_uuid("l2_network", _L2), {"uuid": l3.l2_network_uuid}).first()
        if l2 is None:
            raise not_found("L2 network", l3.l2_network_uuid)
        nics.append(
            NicPlan(
                uuid=_uuid(),
                l3_uuid=l3.uuid,
                l2=l2_spec(l2, session),
                device_id=index,
                default=l3.uuid == default_l3,
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
    plan.cpu, plan.memory, plan.offering_uuid = offering.cpu_num, offering.memory_size, offering.uuid
    plan.image_uuid, plan.image_url = image.uuid, image_location(session, image.uuid)
    plan.platform, plan.zone_uuid = image.platform, zone_uuid
    plan.nics, plan.volumes = nics, volumes
    plan.allocator_strategy = offering.allocator_strategy
    plan.wanted_cluster, plan.wanted_host = msg.cluster_uuid, msg.host_uuid
    plan.wanted_ps = msg.primary_storage_uuid_for_root_volume
    return l3s


def prepare(session: Session, plan: CreatePlan) -> CreatePlan:
    """The whole database side of starting a create, in ONE transaction: the uuid guard, resolving
    the request (``plan.request``) and ``reserve``. (They were three transactions; each costs a
    pool checkout, a fence check and a commit, and the reads are consistent with the writes now.)"""
    assert plan.request is not None
    if (
        plan.guard
        and session.execute(_columns_by_uuid("vm_instance", ("uuid",)), {"uuid": plan.vm_uuid}).first()
    ):
        raise uuid_taken(plan.vm_uuid)
    # Held while reserving: the session's identity map keeps rows only weakly, and allocate_ip
    # reads the L3 again (from the map, not the database, as long as this reference lives).
    l3s = _resolve_into(session, plan, plan.request)
    reserve(session, plan)
    plan.reserved = True
    del l3s
    return plan


def _uuid() -> str:
    return secrets.token_hex(16)


def new_mac() -> str:
    # 0xfa: a locally administered unicast prefix; 40 random bits make collisions vanishingly rare,
    # and the unique constraint on vm_nic.mac catches the rest.
    return "fa:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(5))


# Candidates read first, then all of them only if every one of those was taken meanwhile: the
# strategy picks among the best few, and reading 64 rows on every create cost more than the rest.
_FIRST_CANDIDATES = 16
_ALL_CANDIDATES = 64


def _placements(
    session: Session, plan: CreatePlan, demand: allocator.Demand
) -> Iterator[tuple[allocator.HostCandidate, tuple[str, str, str]]]:
    """Where the VM could go, best first: each candidate host with its roomiest primary storage."""
    strategy = allocator.strategy(plan.allocator_strategy)
    tried: set[str] = set()
    for limit in (_FIRST_CANDIDATES, _ALL_CANDIDATES):
        found = allocator.candidates(session, demand, limit)
        for host in strategy.order(found):
            if host.uuid in tried:
                continue
            tried.add(host.uuid)
            storages = allocator.primary_storages(session, host.cluster_uuid, plan.disk, plan.wanted_ps)
            if storages:
                yield host, storages[0]
        if len(found) < limit:
            return  # that was every candidate


def reserve(session: Session, plan: CreatePlan) -> CreatePlan:
    """Hold a host, storage, IPs and quota, and insert the VM's rows: all or nothing.

    The order matters for throughput: the host's row and, above all, the primary storage's (every
    create in a cluster updates that one row) stay locked from their reservation until the commit,
    and creates touching them queue for each other meanwhile. So the IPs are taken and the rows
    inserted first, for the host chosen; the reservation is the transaction's last statement. (Made
    first, it had creates waiting on the storage row for most of the reserve transaction: half the
    pool's connections were in that wait.)"""
    account = plan.account
    check_quota(session, account, "vm.num", 1)
    check_quota(session, account, "vm.cpuNum", plan.cpu)
    check_quota(session, account, "vm.memorySize", plan.memory)
    check_quota(session, account, "volume.num", len(plan.volumes))
    for nic in plan.nics:
        got = allocate_ip(session, nic.l3_uuid, account.uuid, for_uuid=nic.uuid, quota_account=account)
        nic.ip, nic.netmask, nic.gateway = got.ip, got.netmask, got.gateway
        nic.mac = new_mac()
    demand = allocator.Demand(
        zone_uuid=plan.zone_uuid,
        cpu=plan.cpu,
        memory=plan.memory,
        disk=plan.disk,
        l2_uuids=frozenset(n.l2.uuid for n in plan.nics),
        cluster_uuid=plan.wanted_cluster,
        host_uuid=plan.wanted_host,
    )
    considered = 0
    for host, (ps_uuid, ps_type, ps_url) in _placements(session, plan, demand):
        considered += 1
        plan.host_uuid, plan.cluster_uuid = host.uuid, host.cluster_uuid
        plan.hypervisor_type = host.hypervisor_type
        plan.ps_uuid, plan.ps_type, plan.ps_url = ps_uuid, ps_type, ps_url
        if considered == 1:
            _insert_rows(session, plan)
        else:
            _move_rows(session, plan)
        # One conditional statement that takes both or neither (no savepoint needed for a miss).
        if capacity.reserve_host_and_storage(session, host.uuid, plan.cpu, plan.memory, ps_uuid, plan.disk):
            return plan
        # else another create took it meanwhile: try the next one
    raise RingstackError(
        VmError.NO_HOST_AVAILABLE,
        f"no host in zone {plan.zone_uuid} has {plan.cpu} CPUs, {plan.memory} bytes of memory and "
        f"{plan.disk} bytes of primary storage free, with every L2 network attached",
        details={"cpu": plan.cpu, "memory": plan.memory, "disk": plan.disk, "candidates": considered},
    )


def _insert_rows(session: Session, plan: CreatePlan) -> None:
    # Core INSERTs (the column defaults still apply): the ORM's unit of work cost the node more
    # than the database took to run them, on every create.
    account = plan.account
    session.execute(
        _INSERT_VM,
        {
            "uuid": plan.vm_uuid,
            "name": plan.name,
            "description": plan.description,
            "owner_account_uuid": account.uuid,
            "zone_uuid": plan.zone_uuid,
            "cluster_uuid": plan.cluster_uuid,
            "host_uuid": plan.host_uuid,
            "last_host_uuid": plan.host_uuid,
            "instance_offering_uuid": plan.offering_uuid,
            "image_uuid": plan.image_uuid,
            "root_volume_uuid": plan.volumes[0].uuid,
            "default_l3_network_uuid": next(n.l3_uuid for n in plan.nics if n.default),
            "hypervisor_type": plan.hypervisor_type or "Simulator",
            "platform": plan.platform,
            "cpu_num": plan.cpu,
            "memory_size": plan.memory,
            "state": VmState.STARTING.value,
            "allocator_strategy": plan.allocator_strategy,
        },
    )
    session.execute(
        _INSERT_NIC,
        [
            {
                "uuid": nic.uuid,
                "vm_instance_uuid": plan.vm_uuid,
                "l3_network_uuid": nic.l3_uuid,
                "ip": nic.ip,
                "netmask": nic.netmask,
                "gateway": nic.gateway,
                "mac": nic.mac,
                "device_id": nic.device_id,
                "owner_account_uuid": account.uuid,
            }
            for nic in plan.nics
        ],
    )
    session.execute(
        _INSERT_VOLUME,
        [
            {
                "uuid": vol.uuid,
                "name": f"{vol.type}-volume-for-{plan.name}"[:255],
                "description": None,
                "owner_account_uuid": account.uuid,
                "vm_instance_uuid": plan.vm_uuid,
                "primary_storage_uuid": plan.ps_uuid,
                "disk_offering_uuid": vol.disk_offering_uuid,
                "image_uuid": plan.image_uuid if vol.type == "Root" else None,
                "type": vol.type,
                "size": vol.size,
                "device_id": vol.device_id,
                "status": "Creating",
                "host_uuid": _volume_host(plan),
            }
            for vol in plan.volumes
        ],
    )


_MOVE_VM = text(
    "UPDATE vm_instance SET host_uuid = :host, last_host_uuid = :host, cluster_uuid = :cluster, "
    "hypervisor_type = :hypervisor WHERE uuid = :vm"
)
_MOVE_VOLUMES = text(
    "UPDATE volume SET primary_storage_uuid = :storage, host_uuid = :host WHERE vm_instance_uuid = :vm"
)


def _move_rows(session: Session, plan: CreatePlan) -> None:
    """The rows inserted for a host that was taken meanwhile now name the next one (a rare path)."""
    session.execute(
        _MOVE_VM,
        {
            "vm": plan.vm_uuid,
            "host": plan.host_uuid,
            "cluster": plan.cluster_uuid,
            "hypervisor": plan.hypervisor_type or "Simulator",
        },
    )
    session.execute(_MOVE_VOLUMES, {"vm": plan.vm_uuid, "storage": plan.ps_uuid, "host": _volume_host(plan)})


def _volume_host(plan: CreatePlan) -> str | None:
    return plan.host_uuid if plan.ps_type == "LocalStorage" else None


_INSERT_VM = insert(cast(Table, VmInstance.__table__))
_INSERT_NIC = insert(cast(Table, VmNic.__table__))
_INSERT_VOLUME = insert(cast(Table, Volume.__table__))


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
