"""Virtual routers, management side (ZStack's names): offerings and VIPs; the ``VirtualRouter``
network service provider, which gives a guest L3 its VR appliance when its first VM is created
(``appliance.py``) and pushes each NIC's DHCP entry, the L3's SNAT and DNS to it; port forwarding
(``portforwarding.py``); and VR tracking: each node pings the VRs it owns, marks them Disconnected
after ``host_ping_misses`` misses, and on their return (or a reboot: the agent's uptime went back)
pushes the whole desired state again (``vrouter.sync``); ``ReconnectVirtualRouter`` does so on
demand. EIPs are another service's (``apply_eip``/``remove_eip`` here are the VR backend)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid as uuidlib
from collections.abc import Sequence
from typing import Any, ClassVar

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from bus.aio import AsyncBus
from bus.envelope import Envelope
from bus.errors import RingstackError, not_found
from bus.topology import QueueSpec
from mgmt.cluster.owner import OwnerPath
from mgmt.core.access import forget_sharing, load_owned, load_visible
from mgmt.core.agents import AgentClient
from mgmt.core.cascade import CascadeRegistry, CascadeRule, announce_deleted
from mgmt.core.db import Database, create_guard
from mgmt.core.events import EventPublisher
from mgmt.core.extensions import ExtensionRegistry
from mgmt.core.flow import Cleanup
from mgmt.core.garbage import GarbageCollector
from mgmt.core.query import QueryTarget, Relation, run_query
from mgmt.core.quota import check_quota, define_quota, register_usage
from mgmt.core.service import CallContext, Service, handler
from mgmt.services.eip.backends import EipBackend, EipTarget
from mgmt.services.network.ipam import allocate_ip, release_ips_for
from mgmt.services.network.providers import NicServices, ProviderExtension
from mgmt.services.vm import plan as plans
from mgmt.services.vm import specs
from mgmt.services.vm.create import VmInstantiateExtension
from mgmt.services.vm.plan import CreatePlan
from mgmt.services.vrouter import appliance, errors, portforwarding
from schema.agent import DestroyVmCommand
from schema.agent_base import PingCommand, PingReply
from schema.api.base import EmptyReply, Event, QueryReply
from schema.api.vrouter import (
    AttachPortForwardingRule,
    CreatePortForwardingRule,
    CreateVip,
    CreateVirtualRouterOffering,
    DeletePortForwardingRule,
    DeleteVip,
    DeleteVirtualRouterOffering,
    DetachPortForwardingRule,
    EnsureVirtualRouter,
    PortForwardingRuleInventory,
    PortForwardingRuleReply,
    QueryPortForwardingRule,
    QueryVip,
    QueryVirtualRouterOffering,
    QueryVirtualRouterVm,
    ReconnectVirtualRouter,
    SyncVirtualRouter,
    VipInventory,
    VipReply,
    VirtualRouterOfferingInventory,
    VirtualRouterOfferingReply,
    VirtualRouterVmInventory,
    VirtualRouterVmReply,
)
from schema.db.image import Image
from schema.db.network import L3Network, UsedIp
from schema.db.vm import VmInstance
from schema.db.vrouter import PortForwardingRule, Vip, VirtualRouterOffering, VirtualRouterVm
from schema.db.zone import Zone
from schema.vrouter import (
    ChangeReply,
    DhcpAddCommand,
    DhcpEntry,
    DhcpRemoveCommand,
    DnsSetCommand,
    Eip,
    EipCreateCommand,
    EipRemoveCommand,
    PortForwardingCreateCommand,
    PortForwardingRemoveCommand,
    SnatSetCommand,
    VipCreateCommand,
    VipRemoveCommand,
    VirtualRouterAgent,
    VrErrors,
)
from schema.vrouter import Vip as VrVip

log = logging.getLogger(__name__)

OFFERING_KIND = "virtualRouterOffering"
VIP_KIND = "vip"
VIP_QUOTA = "vip.num"

define_quota(VIP_QUOTA, 20, "VIPs")
register_usage(
    VIP_QUOTA,
    lambda session, account_uuid: (
        session.scalar(select(func.count()).select_from(Vip).where(Vip.owner_account_uuid == account_uuid))
        or 0
    ),
)

OFFERING_QUERY = QueryTarget.for_model(
    VirtualRouterOffering,
    VirtualRouterOfferingInventory,
    name=OFFERING_KIND,
    relations={"zone": Relation("zone", VirtualRouterOffering.zone_uuid, Zone.uuid)},
)
VR_KIND = "virtualRouterVm"
PF_KIND = portforwarding.PF_KIND
BOOT_TIMEOUT = 300.0  # seconds an appliance may take to boot and answer
ENSURE_TIMEOUT = BOOT_TIMEOUT + 180.0
PUSH_TIMEOUT = 60.0

VR_QUERY = QueryTarget.for_model(
    VirtualRouterVm,
    VirtualRouterVmInventory,
    name=VR_KIND,
    relations={"l3Network": Relation("l3Network", VirtualRouterVm.guest_l3_network_uuid, L3Network.uuid)},
)
PF_QUERY = QueryTarget.for_model(
    PortForwardingRule,
    PortForwardingRuleInventory,
    name=PF_KIND,
    relations={"vip": Relation("vip", PortForwardingRule.vip_uuid, Vip.uuid)},
)
VIP_QUERY = QueryTarget.for_model(
    Vip,
    VipInventory,
    name=VIP_KIND,
    relations={"l3Network": Relation("l3Network", Vip.l3_network_uuid, L3Network.uuid)},
)


# ---------------------------------------------------------------- cascades


def _offering_children(session: Session, parent_kind: str, uuids: Sequence[str]) -> list[str]:
    column = {
        "zone": VirtualRouterOffering.zone_uuid,
        "image": VirtualRouterOffering.image_uuid,
    }.get(parent_kind)
    if column is not None:
        return list(session.scalars(select(VirtualRouterOffering.uuid).where(column.in_(uuids))))
    return list(
        session.scalars(
            select(VirtualRouterOffering.uuid).where(
                VirtualRouterOffering.management_network_uuid.in_(uuids)
                | VirtualRouterOffering.public_network_uuid.in_(uuids)
            )
        )
    )


def _delete_offerings(session: Session, uuids: Sequence[str]) -> None:
    session.execute(delete(VirtualRouterOffering).where(VirtualRouterOffering.uuid.in_(uuids)))


def _vip_children(session: Session, parent_kind: str, uuids: Sequence[str]) -> list[str]:
    if parent_kind == "ip_range":  # the VIPs whose address the range holds
        stmt = select(UsedIp.used_for_uuid).where(
            UsedIp.ip_range_uuid.in_(uuids), UsedIp.used_for_uuid.is_not(None)
        )
        owners = set(session.scalars(stmt))
        return list(session.scalars(select(Vip.uuid).where(Vip.uuid.in_(owners))))
    return list(session.scalars(select(Vip.uuid).where(Vip.l3_network_uuid.in_(uuids))))


def _delete_vips(session: Session, uuids: Sequence[str]) -> None:
    session.execute(delete(UsedIp).where(UsedIp.used_for_uuid.in_(uuids)))
    session.execute(delete(Vip).where(Vip.uuid.in_(uuids)))


OFFERING_RULE = CascadeRule(
    kind=OFFERING_KIND,
    parents=("zone", "image", "l3_network"),
    children_of=_offering_children,
    delete=_delete_offerings,
)
VIP_RULE = CascadeRule(
    kind=VIP_KIND, parents=("l3_network", "ip_range"), children_of=_vip_children, delete=_delete_vips
)


def _offering_inventory(row: VirtualRouterOffering) -> VirtualRouterOfferingInventory:
    return VirtualRouterOfferingInventory.model_validate(row, from_attributes=True)


def _vip_inventory(row: Vip) -> VipInventory:
    return VipInventory.model_validate(row, from_attributes=True)


def _pf_children(session: Session, parent_kind: str, uuids: Sequence[str]) -> list[str]:
    return list(
        session.scalars(select(PortForwardingRule.uuid).where(PortForwardingRule.vip_uuid.in_(uuids)))
    )


def _delete_pfs(session: Session, uuids: Sequence[str]) -> None:
    session.execute(delete(PortForwardingRule).where(PortForwardingRule.uuid.in_(uuids)))


def _vr_children(session: Session, parent_kind: str, uuids: Sequence[str]) -> list[str]:
    return list(
        session.scalars(select(VirtualRouterVm.uuid).where(VirtualRouterVm.guest_l3_network_uuid.in_(uuids)))
    )


def _delete_vrs(session: Session, uuids: Sequence[str]) -> None:
    session.execute(delete(VirtualRouterVm).where(VirtualRouterVm.uuid.in_(uuids)))


PF_RULE = CascadeRule(kind=PF_KIND, parents=("vip",), children_of=_pf_children, delete=_delete_pfs)
VR_RULE = CascadeRule(kind=VR_KIND, parents=("l3_network",), children_of=_vr_children, delete=_delete_vrs)


def _vr_inventory(session: Session, uuid: str) -> VirtualRouterVmInventory:
    row = session.get(VirtualRouterVm, uuid, populate_existing=True)
    if row is None:
        raise not_found("virtual router", uuid)
    vm = session.get(VmInstance, uuid)
    inv = VirtualRouterVmInventory.model_validate(row, from_attributes=True)
    return inv.model_copy(update={"state": vm.state if vm else None})


def _vm_gone(session: Session, vr_uuid: str) -> bool:
    vm = session.get(VmInstance, vr_uuid)
    return vm is None or vm.state in appliance.GONE_STATES


def _owned_vrs(session: Session) -> list[tuple[str, str]]:
    rows = session.execute(
        select(VirtualRouterVm.uuid, VirtualRouterVm.status).where(VirtualRouterVm.status != "Creating")
    )
    return [(u, st) for u, st in rows]


class VirtualRouterProvider(ProviderExtension):
    """The ``VirtualRouter`` network service provider: a NIC on an L3 taking services from it gets
    the L3's VR (created on first use, one per L3: ``EnsureVirtualRouter`` runs in the L3's serial
    queue on its owner), then its DHCP entry, the L3's SNAT and DNS pushed to that VR."""

    provider_type = appliance.PROVIDER_TYPE

    def __init__(self, service: VirtualRouterService) -> None:
        super().__init__(service.db)
        self.service = service

    async def apply(self, plan: CreatePlan, nics: list[NicServices]) -> None:
        for l3_uuid in sorted({n.nic.l3_uuid for n in nics}):
            mine = [n for n in nics if n.nic.l3_uuid == l3_uuid]
            services = mine[0].services
            vr = await self.service.ensure(l3_uuid)
            agents = self.service.vr_agents
            if "DHCP" in services:
                entries = [
                    DhcpEntry(
                        mac=n.nic.mac,
                        ip=n.nic.ip,  # type: ignore[arg-type]
                        hostname=appliance.hostname_of(plan.vm_uuid),
                        default_route=n.nic.default,
                    )
                    for n in mine
                    if n.nic.ip
                ]
                if entries:
                    try:
                        await agents.call(DhcpAddCommand(host_uuid=vr.uuid, entries=entries), ChangeReply)
                    except RingstackError as exc:
                        if exc.code != VrErrors.CONFLICT:
                            raise
                        # An entry of a create that rolled back holds the address (its removal
                        # was missed): the database is the truth, and a full sync makes it so.
                        log.info("VR %s: %s; syncing it whole", vr.uuid, exc.message)
                        await self.service.sync_routed(vr.uuid, strict=True)
            settings = await self.db.run(appliance.desired_settings, vr.uuid)
            if "SNAT" in services and settings.snats:
                await agents.call(SnatSetCommand(host_uuid=vr.uuid, snat=settings.snats[0]), ChangeReply)
            if "DNS" in services:
                await agents.call(DnsSetCommand(host_uuid=vr.uuid, dns=settings.dns), ChangeReply)

    async def revoke(self, plan: CreatePlan, nics: list[NicServices]) -> None:
        for l3_uuid in sorted({n.nic.l3_uuid for n in nics}):
            macs = [n.nic.mac for n in nics if n.nic.l3_uuid == l3_uuid and n.nic.mac]
            vr = await self.db.run(appliance.vr_of_l3, l3_uuid)
            if vr is None or not macs or vr.status == "Creating":
                continue
            try:
                await self.service.vr_agents.call(
                    DhcpRemoveCommand(host_uuid=vr.uuid, macs=macs), ChangeReply
                )
            except RingstackError as exc:  # the VR's next sync removes them
                log.warning("DHCP entries of VM %s left on VR %s: %s", plan.vm_uuid, vr.uuid, exc)


class VirtualRouterService(Service):
    name = "vrouter"

    db: Database
    events: EventPublisher
    cascade: CascadeRegistry
    agents: AgentClient
    extensions: ExtensionRegistry
    garbage: GarbageCollector
    bus: AsyncBus
    owners: OwnerPath
    config: Any

    boot_timeout: ClassVar[float] = BOOT_TIMEOUT

    async def start(self) -> None:
        self.cascade.register(OFFERING_RULE)
        self.cascade.register(VIP_RULE)
        self.cascade.register(PF_RULE)
        self.cascade.register(VR_RULE)
        self.vr_agents = AgentClient(self.bus, default_timeout=PUSH_TIMEOUT, protocol=VirtualRouterAgent)
        self.provider = VirtualRouterProvider(self)
        self.extensions.register(VmInstantiateExtension, self.provider)
        self.extensions.register(EipBackend, VirtualRouterEipBackend(self))  # type: ignore[type-abstract]
        self._misses: dict[str, int] = {}
        self._uptime: dict[str, float] = {}
        self._limit = asyncio.Semaphore(32)
        spec = self.bus.topology.event_queue(
            "vrouter",
            "vm.*.destroyed",
            "vm.*.recovered",
            "l3_network.*.dns_added",
            "l3_network.*.dns_removed",
            durable=True,
        )
        spec = QueueSpec(
            spec.name,
            durable=True,
            bindings=spec.bindings,
            arguments={"x-expires": 15 * 60 * 1000, "x-message-ttl": 10 * 60 * 1000},
        )
        self._consumer = self.bus.consume(spec, self._on_event, prefetch=16)
        await self.bus.start_consumer(self._consumer)
        self._task = asyncio.create_task(self._track(), name="vrouter-tracker")

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self.bus.cancel(self._consumer)
        for kind in (OFFERING_KIND, VIP_KIND, PF_KIND, VR_KIND):
            self.cascade.unregister(kind)

    # ------------------------------------------------------------------ offerings

    @handler(CreateVirtualRouterOffering)
    async def create_offering(
        self, msg: CreateVirtualRouterOffering, ctx: CallContext
    ) -> VirtualRouterOfferingReply:
        uuid = ctx.new_resource_uuid(msg)

        def create(session: Session) -> VirtualRouterOfferingInventory:
            existing = create_guard(session, VirtualRouterOffering, uuid, ctx)
            if existing is not None:
                return _offering_inventory(existing)
            if session.get(Zone, msg.zone_uuid) is None:
                raise not_found("zone", msg.zone_uuid)
            if session.get(Image, msg.image_uuid) is None:
                raise not_found("image", msg.image_uuid)
            for field, l3_uuid in (
                ("managementNetworkUuid", msg.management_network_uuid),
                ("publicNetworkUuid", msg.public_network_uuid),
            ):
                l3 = session.get(L3Network, l3_uuid)
                if l3 is None:
                    raise not_found("l3_network", l3_uuid)
                if l3.zone_uuid != msg.zone_uuid:
                    raise RingstackError(
                        errors.WRONG_ZONE,
                        f"{field} {l3_uuid} is in zone {l3.zone_uuid}, not {msg.zone_uuid}",
                        details={"field": field},
                    )
            public = session.get(L3Network, msg.public_network_uuid)
            assert public is not None
            if public.category != "Public":
                raise RingstackError(
                    errors.NOT_PUBLIC,
                    f"L3 network {public.uuid} is {public.category}; a VR's public network must be Public",
                    details={"uuid": public.uuid},
                )
            if msg.is_default:  # one default per zone: the new one replaces the old
                for row in session.scalars(
                    select(VirtualRouterOffering).where(
                        VirtualRouterOffering.zone_uuid == msg.zone_uuid, VirtualRouterOffering.is_default
                    )
                ):
                    row.is_default = False
            row = VirtualRouterOffering(
                uuid=uuid,
                name=msg.name,
                description=msg.description,
                zone_uuid=msg.zone_uuid,
                image_uuid=msg.image_uuid,
                management_network_uuid=msg.management_network_uuid,
                public_network_uuid=msg.public_network_uuid,
                cpu_num=msg.cpu_num,
                memory_size=msg.memory_size,
                is_default=msg.is_default,
                state="Enabled",
                owner_account_uuid=ctx.account.uuid,
            )
            session.add(row)
            session.flush()
            return _offering_inventory(row)

        inv = await self.db.run(create)
        await self.events.resource_event(OFFERING_KIND, inv.uuid, "created", inv.to_wire())
        return VirtualRouterOfferingReply(inventory=inv)

    @handler(DeleteVirtualRouterOffering)
    async def delete_offering(self, msg: DeleteVirtualRouterOffering, ctx: CallContext) -> EmptyReply:
        def remove(session: Session) -> dict[str, list[str]] | None:
            row = session.get(VirtualRouterOffering, msg.uuid)
            if row is None:
                return None  # a retried delete succeeds
            cascaded = self.cascade.delete(session, OFFERING_KIND, msg.uuid, msg.delete_mode)
            session.delete(row)
            return cascaded

        cascaded = await self.db.run(remove)
        if cascaded is not None:
            await announce_deleted(self.events, cascaded, OFFERING_KIND, msg.uuid)
        return EmptyReply()

    @handler(QueryVirtualRouterOffering, serial=False)
    async def query_offering(self, msg: QueryVirtualRouterOffering, ctx: CallContext) -> QueryReply:
        return await self.db.run(run_query, OFFERING_QUERY, msg, ctx.account)

    # ------------------------------------------------------------------ VIPs

    @handler(CreateVip)
    async def create_vip(self, msg: CreateVip, ctx: CallContext) -> VipReply:
        uuid = ctx.new_resource_uuid(msg)

        def create(session: Session) -> VipInventory:
            existing = create_guard(session, Vip, uuid, ctx)
            if existing is not None:
                return _vip_inventory(existing)
            l3 = load_visible(session, L3Network, msg.l3_network_uuid, ctx.account, "l3_network")
            if l3.category != "Public":
                raise RingstackError(
                    errors.NOT_PUBLIC,
                    f"L3 network {l3.uuid} is {l3.category}; VIPs come from Public networks",
                    details={"uuid": l3.uuid},
                )
            check_quota(session, ctx.account, VIP_QUOTA, 1)
            got = allocate_ip(
                session,
                l3.uuid,
                ctx.account.uuid,
                static_ip=msg.required_ip,
                for_uuid=uuid,
                quota_account=None,
            )
            row = Vip(
                uuid=uuid,
                name=msg.name,
                description=msg.description,
                l3_network_uuid=l3.uuid,
                ip=got.ip,
                gateway=got.gateway,
                netmask=got.netmask,
                state="Enabled",
                owner_account_uuid=ctx.account.uuid,
            )
            session.add(row)
            session.flush()
            return _vip_inventory(row)

        inv = await self.db.run(create)
        await self.events.resource_event(VIP_KIND, inv.uuid, "created", inv.to_wire())
        return VipReply(inventory=inv)

    @handler(DeleteVip)
    async def delete_vip(self, msg: DeleteVip, ctx: CallContext) -> EmptyReply:
        def remove(session: Session) -> bool:
            try:
                row = load_owned(session, Vip, msg.uuid, ctx.account, VIP_KIND)
            except RingstackError as exc:
                if exc.code == "SYS.NOT_FOUND":
                    return False  # a retried delete succeeds
                raise
            if row.use_for is not None and msg.delete_mode != "Enforcing":
                raise RingstackError(
                    errors.VIP_IN_USE,
                    f"VIP {row.ip} ({row.uuid}) is used by {row.use_for}",
                    details={"useFor": row.use_for},
                )
            release_ips_for(session, row.uuid)
            forget_sharing(session, [row.uuid])
            session.delete(row)
            return True

        if await self.db.run(remove):
            await self.events.resource_event(VIP_KIND, msg.uuid, "deleted")
        return EmptyReply()

    @handler(QueryVip, serial=False)
    async def query_vip(self, msg: QueryVip, ctx: CallContext) -> QueryReply:
        return await self.db.run(run_query, VIP_QUERY, msg, ctx.account)

    # ------------------------------------------------------------------ the VR appliances

    async def ensure(self, l3_uuid: str) -> VirtualRouterVmInventory:
        """The L3's serving VR, created if it has none, on the L3's owner."""
        reply = await self.owners.call(
            "EnsureVirtualRouter", {"l3NetworkUuid": l3_uuid}, resource_uuid=l3_uuid, timeout=ENSURE_TIMEOUT
        )
        return VirtualRouterVmReply.model_validate(reply).inventory

    def creator(self) -> appliance.VrCreator:
        return appliance.VrCreator(
            self.db,
            self.agents,
            self.vr_agents,
            self.extensions,
            self.garbage,
            boot_timeout=self.boot_timeout,
        )

    @handler(EnsureVirtualRouter)
    async def ensure_vr(self, msg: EnsureVirtualRouter, ctx: CallContext) -> VirtualRouterVmReply:
        found = await self.db.run(appliance.vr_of_l3, msg.l3_network_uuid)
        if found is not None and (found.status == "Creating" or await self.db.run(_vm_gone, found.uuid)):
            # Its create's node died half-way (this queue runs one create per L3 at a time), or
            # its VM was destroyed: a new VR replaces it.
            await self._discard(found.uuid)
            await self.events.resource_event(VR_KIND, found.uuid, "deleted")
            found = None
        if found is None:
            vr_uuid = uuidlib.uuid4().hex
            await self.creator().run(vr_uuid, msg.l3_network_uuid)
            inv = await self.db.run(_vr_inventory, vr_uuid)
            await self.events.resource_event(VR_KIND, vr_uuid, "created", inv.to_wire())
            return VirtualRouterVmReply(inventory=inv)
        if found.status != "Connected":
            await self._reconnect(found.uuid, deadline=time.time() + 30)
        return VirtualRouterVmReply(inventory=await self.db.run(_vr_inventory, found.uuid))

    async def _discard(self, vr_uuid: str) -> None:
        def read(session: Session) -> tuple[str | None, list[Any]]:
            host = appliance.vr_host(session, vr_uuid)
            return host, specs.leftover_volumes(session, vr_uuid, host) if host else []

        host, volumes = await self.db.run(read)
        if host is not None:
            destroy = Cleanup(DestroyVmCommand(host_uuid=host, vm_uuid=vr_uuid), vr_uuid)
            await self.garbage.clean([destroy, *(Cleanup(c, vr_uuid) for c in volumes)], "create-vr/resume")
        await self.db.run(plans.release, vr_uuid)
        await self.db.run(appliance.unrecord, vr_uuid)

    async def _reconnect(self, vr_uuid: str, *, deadline: float) -> VirtualRouterVmInventory:
        """Connect, configure the NICs and push the whole state; Connected when it all worked."""
        try:
            reply = await appliance.wait_connected(self.vr_agents, vr_uuid, deadline)
            await appliance.configure(self.db, self.vr_agents, vr_uuid)
            await appliance.push_state(self.db, self.vr_agents, vr_uuid)
        except RingstackError as exc:
            await self._set_status(vr_uuid, "Disconnected", f"{exc.code}: {exc.message}")
            raise
        assert reply.host_uuid == vr_uuid
        self._uptime[vr_uuid] = 0.0  # the next ping's uptime is the new baseline
        self._misses.pop(vr_uuid, None)
        await self._set_status(vr_uuid, "Connected", None)
        return await self.db.run(_vr_inventory, vr_uuid)

    async def _set_status(self, vr_uuid: str, status: str, reason: str | None) -> None:
        if await self.db.run(appliance.set_status, vr_uuid, status, reason):
            log.log(
                logging.INFO if status == "Connected" else logging.WARNING,
                "VR %s %s: %s",
                vr_uuid,
                status,
                reason,
            )
            await self.events.resource_event(VR_KIND, vr_uuid, "status", {"status": status, "reason": reason})

    @handler(ReconnectVirtualRouter)
    async def reconnect_vr(self, msg: ReconnectVirtualRouter, ctx: CallContext) -> VirtualRouterVmReply:
        await self.db.run(_vr_inventory, msg.vm_instance_uuid)  # SYS.NOT_FOUND for another uuid
        inv = await self._reconnect(msg.vm_instance_uuid, deadline=time.time() + 30)
        return VirtualRouterVmReply(inventory=inv)

    @handler(SyncVirtualRouter)
    async def sync_vr(self, msg: SyncVirtualRouter, ctx: CallContext) -> VirtualRouterVmReply:
        inv = await self.db.run(_vr_inventory, msg.vm_instance_uuid)
        if inv.status == "Connected":
            try:
                await appliance.push_state(self.db, self.vr_agents, msg.vm_instance_uuid)
            except RingstackError as exc:  # the tracker's reconnect pushes it all again
                await self._set_status(msg.vm_instance_uuid, "Disconnected", f"{exc.code}: {exc.message}")
                raise
        return VirtualRouterVmReply(inventory=inv)

    @handler(QueryVirtualRouterVm, serial=False)
    async def query_vr(self, msg: QueryVirtualRouterVm, ctx: CallContext) -> QueryReply:
        reply = await self.db.run(run_query, VR_QUERY, msg, None)
        states = await self.db.run(
            lambda s: dict(
                s.execute(
                    select(VmInstance.uuid, VmInstance.state).where(
                        VmInstance.uuid.in_([i["uuid"] for i in reply.inventories if "uuid" in i])
                    )
                ).all()
            )
        )
        for inv in reply.inventories:
            inv["state"] = states.get(inv.get("uuid"))
        return reply

    async def sync_routed(self, vr_uuid: str, *, strict: bool = False) -> None:
        """A full sync of the VR, on its owner in its serial queue; ``strict``: a failure raises
        (else it is logged: the tracker's next reconnect pushes everything anyway)."""
        try:
            await self.owners.call(
                "SyncVirtualRouter", {"vmInstanceUuid": vr_uuid}, resource_uuid=vr_uuid, timeout=PUSH_TIMEOUT
            )
        except RingstackError as exc:
            if strict:
                raise
            log.warning("VR %s not synced: %s", vr_uuid, exc)

    async def _on_event(self, env: Envelope) -> None:
        try:
            event = Event.from_wire(env.body)
        except ValueError:
            return
        if event.resource_type == "l3_network":  # its DNS changed: its VR tells guests at once
            vr = await self.db.run(appliance.vr_of_l3, event.resource_uuid)
            if vr is not None and vr.status == "Connected":
                await self.sync_routed(vr.uuid)
            return
        if event.resource_type != "vm":
            return
        vrs = await self.db.run(portforwarding.detach_nics_of, event.resource_uuid)
        await asyncio.gather(*(self.sync_routed(vr) for vr in vrs))

    # ------------------------------------------------------------------ tracking

    async def _track(self) -> None:
        while True:
            await asyncio.sleep(self.config.host_ping_interval)
            try:
                await self.check_all()
            except Exception:
                log.exception("VR tracking round failed")

    async def check_all(self) -> None:
        vrs = await self.db.run_unfenced(_owned_vrs)
        owned = [v for v in vrs if self.owners.holds(v[0])]
        await asyncio.gather(*(self._check(u, st) for u, st in owned))

    async def _check(self, vr_uuid: str, status: str) -> None:
        async with self._limit:
            try:
                reply = await self.vr_agents.call(
                    PingCommand(host_uuid=vr_uuid), PingReply, timeout=min(self.config.host_ping_interval, 10)
                )
                reason = None if reply.host_uuid == vr_uuid else f"the agent says it is {reply.host_uuid}"
            except RingstackError as exc:
                reply, reason = None, f"{exc.code}: {exc.message}"
            with self.owners.fenced_if_held(vr_uuid) as owned:
                if not owned:
                    return
                if reason is not None:
                    misses = self._misses[vr_uuid] = self._misses.get(vr_uuid, 0) + 1
                    if misses >= self.config.host_ping_misses:
                        if status != "Disconnected":
                            await self._set_status(vr_uuid, "Disconnected", reason)
                        await self._restart_if_stopped(vr_uuid)
                    return
                assert reply is not None
                self._misses.pop(vr_uuid, None)
                rebooted = reply.uptime < self._uptime.get(vr_uuid, 0.0)
                self._uptime[vr_uuid] = reply.uptime
                if status != "Connected" or rebooted:
                    # Back, or restarted with nothing: it gets everything again.
                    try:
                        await self.owners.call(
                            "ReconnectVirtualRouter",
                            {"vmInstanceUuid": vr_uuid},
                            resource_uuid=vr_uuid,
                            timeout=PUSH_TIMEOUT,
                        )
                    except RingstackError as exc:
                        log.info("VR %s answers pings but did not take its state: %s", vr_uuid, exc)

    async def _restart_if_stopped(self, vr_uuid: str) -> None:
        """A VR whose VM is Stopped is started again (its agent boots, answers pings, and the next
        round pushes it everything); one destroyed is replaced by its L3's next VM create."""
        state = await self.db.run(
            lambda s: s.scalar(select(VmInstance.state).where(VmInstance.uuid == vr_uuid))
        )
        if state != "Stopped":
            return
        log.warning("VR %s is stopped: starting it", vr_uuid)
        try:
            await self.owners.call(
                "StartVmInstance", {"uuid": vr_uuid}, resource_uuid=vr_uuid, timeout=PUSH_TIMEOUT
            )
        except RingstackError as exc:
            log.warning("VR %s not started: %s", vr_uuid, exc)

    # ------------------------------------------------------------------ port forwarding

    async def _push_pf(self, change: portforwarding.VrChange, *, create: bool) -> None:
        agents, vr = self.vr_agents, change.vr_uuid
        if create:
            if change.vip_first:
                await agents.call(VipCreateCommand(host_uuid=vr, vip=VrVip(ip=change.vip_ip)), ChangeReply)  # type: ignore[arg-type]
            await agents.call(PortForwardingCreateCommand(host_uuid=vr, rule=change.rule), ChangeReply)
        else:
            await agents.call(PortForwardingRemoveCommand(host_uuid=vr, uuid=change.rule.uuid), ChangeReply)
            if change.vip_last:
                await agents.call(VipRemoveCommand(host_uuid=vr, ip=change.vip_ip), ChangeReply)  # type: ignore[arg-type]

    async def _attach(self, rule_uuid: str, nic_uuid: str, ctx: CallContext) -> PortForwardingRuleReply:
        inv, change = await self.db.run(portforwarding.attach, rule_uuid, nic_uuid, ctx.account)
        if change is not None:
            try:
                await self._push_pf(change, create=True)
            except RingstackError:
                await self.db.run(portforwarding.rebind, rule_uuid, None, None)
                await self.sync_routed(change.vr_uuid)  # whatever half of it the VR took goes
                raise
            inv = inv.model_copy(update={"vm_nic_uuid": nic_uuid, "guest_ip": str(change.rule.guest_ip)})
            await self.events.resource_event(PF_KIND, rule_uuid, "attached", inv.to_wire())
        return PortForwardingRuleReply(inventory=inv)

    @handler(CreatePortForwardingRule)
    async def create_pf(self, msg: CreatePortForwardingRule, ctx: CallContext) -> PortForwardingRuleReply:
        uuid = ctx.new_resource_uuid(msg)
        row = await self.db.run(portforwarding.create, msg, uuid, ctx)
        inv = portforwarding.inventory(row)
        await self.events.resource_event(PF_KIND, uuid, "created", inv.to_wire())
        if msg.vm_nic_uuid is not None:
            try:
                return await self._attach(uuid, msg.vm_nic_uuid, ctx)
            except RingstackError:
                await self.db.run(portforwarding.delete, uuid, ctx.account)
                await self.events.resource_event(PF_KIND, uuid, "deleted")
                raise
        return PortForwardingRuleReply(inventory=inv)

    @handler(AttachPortForwardingRule)
    async def attach_pf(self, msg: AttachPortForwardingRule, ctx: CallContext) -> PortForwardingRuleReply:
        return await self._attach(msg.rule_uuid, msg.vm_nic_uuid, ctx)

    @handler(DetachPortForwardingRule)
    async def detach_pf(self, msg: DetachPortForwardingRule, ctx: CallContext) -> PortForwardingRuleReply:
        before = await self.db.run(
            lambda s: portforwarding.inventory(
                load_owned(s, PortForwardingRule, msg.uuid, ctx.account, PF_KIND)
            )
        )
        inv, change = await self.db.run(portforwarding.detach, msg.uuid, ctx.account)
        if change is not None:
            try:
                await self._push_pf(change, create=False)
            except RingstackError:
                await self.db.run(portforwarding.rebind, msg.uuid, before.vm_nic_uuid, before.guest_ip)
                raise
            inv = inv.model_copy(update={"vm_nic_uuid": None, "guest_ip": None})
            await self.events.resource_event(PF_KIND, msg.uuid, "detached", inv.to_wire())
        return PortForwardingRuleReply(inventory=inv)

    @handler(DeletePortForwardingRule)
    async def delete_pf(self, msg: DeletePortForwardingRule, ctx: CallContext) -> EmptyReply:
        deleted, change = await self.db.run(portforwarding.delete, msg.uuid, ctx.account)
        if change is not None:
            try:
                await self._push_pf(change, create=False)
            except RingstackError as exc:  # the row is gone: the VR's next sync drops the rule
                log.warning(
                    "port forwarding %s left on VR %s until its next sync: %s", msg.uuid, change.vr_uuid, exc
                )
                await self.sync_routed(change.vr_uuid)
        if deleted:
            await self.events.resource_event(PF_KIND, msg.uuid, "deleted")
        return EmptyReply()

    @handler(QueryPortForwardingRule, serial=False)
    async def query_pf(self, msg: QueryPortForwardingRule, ctx: CallContext) -> QueryReply:
        return await self.db.run(run_query, PF_QUERY, msg, ctx.account)

    # ------------------------------------------------------------------ EIP backend

    async def apply_eip(self, target: EipTarget) -> None:
        """The VIP and the EIP on the VR of the NIC's L3 (made if the L3 has none yet)."""
        vr = await self.ensure(target.nic_l3_uuid)
        if target.vip_l3_uuid != vr.public_network_uuid:
            raise RingstackError(
                errors.VIP_NOT_ON_VR,
                f"VIP {target.vip_ip} is on L3 network {target.vip_l3_uuid}; the VR of L3 network "
                f"{target.nic_l3_uuid} is on public network {vr.public_network_uuid}",
                details={"vipL3NetworkUuid": target.vip_l3_uuid, "publicNetworkUuid": vr.public_network_uuid},
            )
        agents = self.vr_agents
        await agents.call(VipCreateCommand(host_uuid=vr.uuid, vip=VrVip(ip=target.vip_ip)), ChangeReply)  # type: ignore[arg-type]
        eip = Eip(uuid=target.eip_uuid, vip_ip=target.vip_ip, guest_ip=target.guest_ip)  # type: ignore[arg-type]
        await agents.call(EipCreateCommand(host_uuid=vr.uuid, eip=eip), ChangeReply)

    async def remove_eip(self, target: EipTarget) -> None:
        vr = await self.db.run(appliance.vr_of_l3, target.nic_l3_uuid)
        if vr is None or vr.status == "Creating":
            return  # nothing there (a VR being made syncs from the database, without it)
        agents = self.vr_agents
        await agents.call(EipRemoveCommand(host_uuid=vr.uuid, uuid=target.eip_uuid), ChangeReply)
        await agents.call(VipRemoveCommand(host_uuid=vr.uuid, ip=target.vip_ip), ChangeReply)  # type: ignore[arg-type]


class VirtualRouterEipBackend:
    """The VirtualRouter provider's EIP backend (``mgmt.services.eip.backends.EipBackend``): NAT on
    the VR of the NIC's L3. The EIP service has written the database first, so the VR's full
    syncs agree with what this pushes."""

    provider_type = appliance.PROVIDER_TYPE

    def __init__(self, service: VirtualRouterService) -> None:
        self.service = service

    async def apply(self, target: EipTarget) -> None:
        await self.service.apply_eip(target)

    async def remove(self, target: EipTarget) -> None:
        await self.service.remove_eip(target)
