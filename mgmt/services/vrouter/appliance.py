"""Virtual-router appliances: creating one for a guest L3 (a flow chain, an undo per step), and
what each VR must hold, computed from the database (``desired_state``).

Creating a VR (``VrCreator.run``), each step undone when a later one fails:

    record       the ``virtual_router_vm`` row (unique per guest L3: one VR per L3, a database
                 invariant) and its status Creating
    create-vm    the appliance VM through the VM create chain (``mgmt.services.vm.create``: the
                 same reserve, volumes, network and start steps with their own rollback), from the
                 offering: NICs on the management, public and guest L3s, the guest NIC taking the
                 L3's gateway address, owned by the system account (hidden from tenants)
    connect      wait for the appliance's agent to answer ``agent.connect`` (it boots)
    configure    ``vrouter.configure_nics``: each NIC by MAC, the public gateway as default route
    sync         ``vrouter.sync``: the whole desired state
    done         status Connected

The VR's agent finds its NICs by MAC; its queue is ``<ns>.agent.<vr uuid>`` (the VM's uuid).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from ipaddress import IPv4Interface
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from bus.errors import RingstackError, Sys, not_found
from mgmt.core.agents import AgentClient, sync_vrouter
from mgmt.core.db import Database
from mgmt.core.extensions import ExtensionRegistry
from mgmt.core.flow import Cleanup, Flow, FlowChain, Garbage
from mgmt.core.service import SYSTEM_ACCOUNT
from mgmt.services.network.ipam import release_ips_for
from mgmt.services.network.providers import services_from
from mgmt.services.vm import plan as plans
from mgmt.services.vm import specs
from mgmt.services.vm.create import CreateVm
from mgmt.services.vm.plan import CreatePlan, NicPlan, VolumePlan
from mgmt.services.vm.states import VmState
from mgmt.services.vrouter import errors
from schema.agent import ApplianceSpec, DeleteVolumeCommand, DestroyVmCommand, StartVmCommand, VmStateReply
from schema.agent_base import ConnectCommand, ConnectReply
from schema.db.eip import Eip as EipRow
from schema.db.image import Image
from schema.db.network import IpRange, L2Network, L3Network
from schema.db.vm import VmInstance, VmNic
from schema.db.vrouter import PortForwardingRule, VirtualRouterOffering, VirtualRouterVm
from schema.vrouter import (
    ChangeReply,
    ConfigureNicsCommand,
    DhcpEntry,
    DnsSettings,
    Eip,
    NicConfig,
    PortForwarding,
    Snat,
    Vip,
    VrState,
)

log = logging.getLogger(__name__)

PROVIDER_TYPE = "VirtualRouter"
GiB = 1 << 30
GONE_STATES = (VmState.DESTROYED.value, VmState.EXPUNGING.value, VmState.DESTROYING.value)


# ---------------------------------------------------------------------- reading


def vr_of_l3(session: Session, l3_uuid: str) -> VirtualRouterVm | None:
    return session.scalar(select(VirtualRouterVm).where(VirtualRouterVm.guest_l3_network_uuid == l3_uuid))


def _range(session: Session, l3_uuid: str) -> IpRange:
    row = session.scalar(
        select(IpRange).where(IpRange.l3_network_uuid == l3_uuid).order_by(IpRange.start_int)
    )
    if row is None:
        raise RingstackError(
            "L3.NO_IP_RANGE", f"L3 network {l3_uuid} has no IP range", details={"uuid": l3_uuid}
        )
    return row


def hostname_of(vm_uuid: str) -> str:
    return f"vm-{vm_uuid[:12]}"


def desired_settings(session: Session, vr_uuid: str) -> VrState:
    """The L3-wide part of a VR's state (SNAT, DNS): what a new NIC's create pushes besides its
    DHCP entry."""
    vr = session.get(VirtualRouterVm, vr_uuid)
    if vr is None:
        raise not_found("virtual router", vr_uuid)
    services = services_from(session, PROVIDER_TYPE, [vr.guest_l3_network_uuid]).get(
        vr.guest_l3_network_uuid, frozenset()
    )
    return VrState(snats=_snats(session, vr, services), dns=_dns(session, vr, services))


def _snats(session: Session, vr: VirtualRouterVm, services: frozenset[str]) -> list[Snat]:
    if "SNAT" not in services or not vr.public_ip:
        return []
    cidr = _range(session, vr.guest_l3_network_uuid).network_cidr
    return [Snat(guest_cidr=cidr, public_ip=vr.public_ip)]  # type: ignore[arg-type]


def _dns(session: Session, vr: VirtualRouterVm, services: frozenset[str]) -> DnsSettings:
    if "DNS" not in services:
        return DnsSettings()
    l3 = session.get(L3Network, vr.guest_l3_network_uuid)
    assert l3 is not None
    return DnsSettings(servers=list(l3.dns), domain=l3.dns_domain)  # type: ignore[arg-type]


def desired_state(session: Session, vr_uuid: str) -> VrState:
    """Everything the VR of a guest L3 must hold, from the database: SNAT for the guest CIDR, a
    DHCP entry per live NIC on the L3, the L3's DNS, and the port forwardings (with their VIPs)
    attached to NICs of the L3, the EIPs on its NICs (with their VIPs). Only the services the L3 takes from the VirtualRouter provider."""
    vr = session.get(VirtualRouterVm, vr_uuid)
    if vr is None:
        raise not_found("virtual router", vr_uuid)
    l3_uuid = vr.guest_l3_network_uuid
    services = services_from(session, PROVIDER_TYPE, [l3_uuid]).get(l3_uuid, frozenset())
    snats = _snats(session, vr, services)
    dhcp: list[DhcpEntry] = []
    if "DHCP" in services:
        rows = session.execute(
            select(VmNic.mac, VmNic.ip, VmNic.vm_instance_uuid, VmInstance.default_l3_network_uuid)
            .join(VmInstance, VmInstance.uuid == VmNic.vm_instance_uuid)
            .where(
                VmNic.l3_network_uuid == l3_uuid,
                VmNic.ip.is_not(None),
                VmInstance.uuid != vr_uuid,
                VmInstance.state.not_in(GONE_STATES),
            )
            .order_by(VmNic.mac)
        )
        dhcp = [
            DhcpEntry(
                mac=mac,
                ip=ip,
                hostname=hostname_of(vm),
                default_route=default_l3 in (None, l3_uuid),
            )
            for mac, ip, vm, default_l3 in rows
        ]
    dns = _dns(session, vr, services)
    pfs: list[PortForwarding] = []
    vips: list[Vip] = []
    if "PortForwarding" in services:
        rules = session.scalars(
            select(PortForwardingRule)
            .join(VmNic, VmNic.uuid == PortForwardingRule.vm_nic_uuid)
            .where(VmNic.l3_network_uuid == l3_uuid, PortForwardingRule.state == "Enabled")
            .order_by(PortForwardingRule.uuid)
        ).all()
        pfs = [pf_of(rule) for rule in rules if rule.guest_ip]
    eips: list[Eip] = []
    if "EIP" in services:
        rows = session.execute(
            select(EipRow.uuid, EipRow.vip_ip, VmNic.ip)
            .join(VmNic, VmNic.uuid == EipRow.vm_nic_uuid)
            .join(VmInstance, VmInstance.uuid == VmNic.vm_instance_uuid)
            .where(
                VmNic.l3_network_uuid == l3_uuid,
                VmNic.ip.is_not(None),
                EipRow.state == "Enabled",
                VmInstance.state.not_in(GONE_STATES),
            )
            .order_by(EipRow.uuid)
        )
        eips = [Eip(uuid=u, vip_ip=vip, guest_ip=ip) for u, vip, ip in rows]  # type: ignore[arg-type]
    vips = [Vip(ip=ip) for ip in sorted({p.vip_ip for p in pfs} | {e.vip_ip for e in eips})]
    return VrState(snats=snats, vips=vips, eips=eips, port_forwardings=pfs, dhcp=dhcp, dns=dns)


def pf_of(rule: PortForwardingRule) -> PortForwarding:
    return PortForwarding(
        uuid=rule.uuid,
        vip_ip=rule.vip_ip,  # type: ignore[arg-type]
        protocol=rule.protocol_type,  # type: ignore[arg-type]
        vip_port_start=rule.vip_port_start,
        vip_port_end=rule.vip_port_end,
        private_port_start=rule.private_port_start,
        private_port_end=rule.private_port_end,
        guest_ip=rule.guest_ip,  # type: ignore[arg-type]
        allowed_cidr=rule.allowed_cidr or "0.0.0.0/0",  # type: ignore[arg-type]
    )


def nic_configs(session: Session, vr_uuid: str) -> ConfigureNicsCommand:
    """The VR's NICs by MAC: Management, Public (with the default route), Guest. One NIC on an
    L3 that is both the management and the public network is the Public one."""
    vr = session.get(VirtualRouterVm, vr_uuid)
    if vr is None:
        raise not_found("virtual router", vr_uuid)
    nics = session.scalars(select(VmNic).where(VmNic.vm_instance_uuid == vr_uuid).order_by(VmNic.device_id))
    configs = []
    for nic in nics:
        if nic.ip is None or nic.netmask is None:
            continue
        address = IPv4Interface(f"{nic.ip}/{nic.netmask}")
        if nic.l3_network_uuid == vr.public_network_uuid:
            configs.append(NicConfig(mac=nic.mac, role="Public", address=address, gateway=nic.gateway))  # type: ignore[arg-type]
        elif nic.l3_network_uuid == vr.guest_l3_network_uuid:
            configs.append(NicConfig(mac=nic.mac, role="Guest", address=address))
        elif nic.l3_network_uuid == vr.management_network_uuid:
            configs.append(NicConfig(mac=nic.mac, role="Management", address=address))
    return ConfigureNicsCommand(host_uuid=vr_uuid, nics=configs)


def vr_host(session: Session, vr_uuid: str) -> str | None:
    vm = session.get(VmInstance, vr_uuid)
    return None if vm is None else (vm.host_uuid or vm.last_host_uuid)


# ---------------------------------------------------------------------- creating


def pick_offering(session: Session, l3: L3Network) -> VirtualRouterOffering:
    """The zone's default offering, else its only enabled one."""
    rows = session.scalars(
        select(VirtualRouterOffering)
        .where(VirtualRouterOffering.zone_uuid == l3.zone_uuid, VirtualRouterOffering.state == "Enabled")
        .order_by(VirtualRouterOffering.is_default.desc(), VirtualRouterOffering.created_at)
    ).all()
    if not rows or (len(rows) > 1 and not rows[0].is_default):
        raise RingstackError(
            errors.NO_OFFERING,
            f"zone {l3.zone_uuid} has {'no' if not rows else 'no default'} virtual-router offering for "
            f"L3 network {l3.uuid}",
            details={"zoneUuid": l3.zone_uuid, "l3NetworkUuid": l3.uuid},
        )
    return rows[0]


def record(session: Session, vr_uuid: str, l3_uuid: str) -> VirtualRouterVm:
    existing = vr_of_l3(session, l3_uuid)
    if existing is not None:
        return existing
    l3 = session.get(L3Network, l3_uuid)
    if l3 is None:
        raise not_found("l3_network", l3_uuid)
    offering = pick_offering(session, l3)
    if l3_uuid in (offering.public_network_uuid, offering.management_network_uuid):
        raise RingstackError(
            errors.BAD_GUEST_NETWORK,
            f"L3 network {l3_uuid} is the offering's public or management network, not a guest network",
        )
    row = VirtualRouterVm(
        uuid=vr_uuid,
        name=f"vrouter-{l3_uuid[:8]}",
        guest_l3_network_uuid=l3_uuid,
        offering_uuid=offering.uuid,
        management_network_uuid=offering.management_network_uuid,
        public_network_uuid=offering.public_network_uuid,
        status="Creating",
    )
    session.add(row)
    session.flush()
    return row


def unrecord(session: Session, vr_uuid: str) -> None:
    session.execute(delete(VirtualRouterVm).where(VirtualRouterVm.uuid == vr_uuid))


def reserve_appliance(session: Session, plan: CreatePlan, vr_uuid: str) -> CreatePlan:
    """``plans.reserve`` for an appliance: the plan is made from the VR's offering (not from a
    CreateVmInstance), and the guest NIC then takes the guest L3's gateway address."""
    vr = session.get(VirtualRouterVm, vr_uuid)
    assert vr is not None
    offering = session.get(VirtualRouterOffering, vr.offering_uuid)
    image = session.get(Image, offering.image_uuid) if offering is not None else None
    if offering is None or image is None:
        raise not_found("virtual router offering", vr.offering_uuid)
    l3_uuids = list(
        dict.fromkeys([vr.management_network_uuid, vr.public_network_uuid, vr.guest_l3_network_uuid])
    )
    nics = []
    for index, l3_uuid in enumerate(l3_uuids):
        l3 = session.get(L3Network, l3_uuid)
        l2 = session.get(L2Network, l3.l2_network_uuid) if l3 is not None else None
        if l3 is None or l2 is None:
            raise not_found("l3_network", l3_uuid)
        nics.append(
            NicPlan(
                uuid=plans._uuid(),
                l3_uuid=l3_uuid,
                l2=specs.l2_spec(l2, session),
                device_id=index,
                default=l3_uuid == vr.public_network_uuid,  # the VR's default route is public
            )
        )
    plan.cpu, plan.memory = offering.cpu_num, offering.memory_size
    plan.offering_uuid = None  # type: ignore[assignment]  # an appliance has no instance offering
    plan.image_uuid, plan.image_url = image.uuid, plans.image_location(session, image.uuid)
    plan.platform, plan.zone_uuid = image.platform or "Linux", offering.zone_uuid
    plan.nics = nics
    plan.volumes = [VolumePlan(uuid=plans._uuid(), type="Root", size=max(image.size or 0, GiB), device_id=0)]
    plans.reserve(session, plan)
    plan.reserved = True  # this attempt holds it: the chain's rollback releases it
    guest = next(n for n in plan.nics if n.l3_uuid == vr.guest_l3_network_uuid)
    release_ips_for(session, guest.uuid)  # the guest NIC is the gateway, outside the range
    gateway = _range(session, vr.guest_l3_network_uuid).gateway
    session.execute(update(VmNic).where(VmNic.uuid == guest.uuid).values(ip=gateway))
    guest.ip = gateway
    public = next(n for n in plan.nics if n.l3_uuid == vr.public_network_uuid)
    vr.public_ip, vr.guest_ip = public.ip, gateway
    return plan


class ApplianceCreate(CreateVm):
    """The VM create chain, for an appliance: planned from the VR offering, started with the
    appliance marker (its agent boots and serves ``<ns>.agent.<vm uuid>``)."""

    def __init__(self, vr_uuid: str, *args: Any) -> None:
        super().__init__(*args)
        self.vr_uuid = vr_uuid

    async def _reserve(self, plan: CreatePlan) -> None:
        await self.db.run(reserve_appliance, plan, self.vr_uuid)

    async def _start(self, plan: CreatePlan) -> None:
        assert plan.host_uuid
        spec = specs.planned_vm_spec(plan).model_copy(
            update={"appliance": ApplianceSpec(kind="VirtualRouter")}
        )
        await self.agents.call(StartVmCommand(host_uuid=plan.host_uuid, vm=spec), VmStateReply)
        plan.started_on_agent = True


@dataclass
class VrCreation:
    vr_uuid: str
    l3_uuid: str
    deadline: float
    plan: CreatePlan | None = None
    vm_created: bool = False
    steps: list[str] = field(default_factory=list)


class VrCreator:
    def __init__(
        self,
        db: Database,
        agents: AgentClient,
        vr_agents: AgentClient,
        extensions: ExtensionRegistry,
        garbage: Garbage,
        *,
        boot_timeout: float,
    ) -> None:
        self.db = db
        self.agents = agents
        self.vr_agents = vr_agents
        self.extensions = extensions
        self.garbage = garbage
        self.boot_timeout = boot_timeout

    def chain(self) -> FlowChain[VrCreation]:
        return FlowChain(
            "create-virtual-router",
            [
                Flow("record", self._record, self._unrecord, undo_failed=True),
                Flow("create-vm", self._create_vm, self._release_vm, cleanup=self._destroy_vm),
                Flow("connect", self._connect),
                Flow("configure", self._configure),
                Flow("sync", self._sync),
                Flow("done", self._done),
            ],
            garbage=self.garbage,
        )

    async def run(self, vr_uuid: str, l3_uuid: str) -> VrCreation:
        deadline = time.time() + self.boot_timeout + 120
        return await self.chain().run(VrCreation(vr_uuid, l3_uuid, deadline), deadline=deadline)

    async def _record(self, c: VrCreation) -> None:
        row = await self.db.run(record, c.vr_uuid, c.l3_uuid)
        if row.uuid != c.vr_uuid:  # cannot happen in the L3's serial queue; the row's constraint says so
            raise RingstackError(errors.ALREADY_HAS_VR, f"L3 network {c.l3_uuid} has VR {row.uuid}")

    async def _unrecord(self, c: VrCreation) -> None:
        await self.db.run(unrecord, c.vr_uuid)

    async def _create_vm(self, c: VrCreation) -> None:
        c.plan = CreatePlan(
            vm_uuid=c.vr_uuid,
            name=f"vrouter-{c.l3_uuid[:8]}",
            description=f"virtual router of L3 network {c.l3_uuid}",
            account=SYSTEM_ACCOUNT,
            start=True,
        )
        creator = ApplianceCreate(c.vr_uuid, self.db, self.agents, self.extensions, self.garbage)
        await creator.run(c.plan, c.deadline)  # rolls itself back when it fails
        c.vm_created = True

    async def _release_vm(self, c: VrCreation) -> None:
        if c.vm_created:
            await self.db.run(plans.release, c.vr_uuid)

    def _destroy_vm(self, c: VrCreation) -> list[Cleanup]:
        if not c.vm_created or c.plan is None or c.plan.host_uuid is None:
            return []
        host = c.plan.host_uuid
        volumes = [
            Cleanup(
                specs.delete_by_uuid(host, v.uuid, c.plan.ps_uuid, c.plan.ps_url, c.plan.ps_type), c.vr_uuid
            )
            if not v.install_path
            else Cleanup(DeleteVolumeCommand(host_uuid=host, install_path=v.install_path), c.vr_uuid)
            for v in c.plan.volumes
        ]
        return [Cleanup(DestroyVmCommand(host_uuid=host, vm_uuid=c.vr_uuid), c.vr_uuid), *volumes]

    async def _connect(self, c: VrCreation) -> None:
        await wait_connected(self.vr_agents, c.vr_uuid, c.deadline)

    async def _configure(self, c: VrCreation) -> None:
        await configure(self.db, self.vr_agents, c.vr_uuid)

    async def _sync(self, c: VrCreation) -> None:
        await push_state(self.db, self.vr_agents, c.vr_uuid)

    async def _done(self, c: VrCreation) -> None:
        await self.db.run(set_status, c.vr_uuid, "Connected", None)


async def wait_connected(
    agents: AgentClient, vr_uuid: str, deadline: float, *, attempt: float = 2.0
) -> ConnectReply:
    """``agent.connect`` until the appliance's agent answers (it is booting) or ``deadline``."""
    last: RingstackError | None = None
    while True:
        left = deadline - time.time()
        if left <= 0:
            raise RingstackError(
                errors.AGENT_UNREACHABLE,
                f"the agent of virtual router {vr_uuid} did not answer: {last}",
                details={"uuid": vr_uuid},
            )
        try:
            reply = await agents.call(
                ConnectCommand(host_uuid=vr_uuid), ConnectReply, timeout=min(attempt, left)
            )
        except RingstackError as exc:
            last = exc
            if exc.code == Sys.UNAVAILABLE:  # no queue yet: the agent has not started
                await asyncio.sleep(min(0.2, max(left, 0)))
            elif exc.code != Sys.TIMEOUT:  # (a timed-out call already waited ``attempt``)
                raise
            continue
        if reply.host_uuid != vr_uuid:
            raise RingstackError(
                errors.AGENT_UNREACHABLE, f"the agent on {vr_uuid}'s queue is {reply.host_uuid}"
            )
        return reply


async def configure(db: Database, agents: AgentClient, vr_uuid: str) -> ChangeReply:
    command = await db.run(nic_configs, vr_uuid)
    return await agents.call(command, ChangeReply)


async def push_state(db: Database, agents: AgentClient, vr_uuid: str) -> ChangeReply:
    state = await db.run(desired_state, vr_uuid)
    reply: ChangeReply = await sync_vrouter(agents, vr_uuid, state)
    await db.run(mark_synced, vr_uuid)
    return reply


def mark_synced(session: Session, vr_uuid: str) -> None:
    session.execute(
        update(VirtualRouterVm).where(VirtualRouterVm.uuid == vr_uuid).values(last_sync_at=func.now())
    )


def set_status(session: Session, vr_uuid: str, status: str, reason: str | None) -> bool:
    changed = session.execute(
        update(VirtualRouterVm)
        .where(VirtualRouterVm.uuid == vr_uuid, VirtualRouterVm.status != status)
        .values(status=status, status_reason=reason)
        .returning(VirtualRouterVm.uuid)
    ).first()
    return changed is not None
