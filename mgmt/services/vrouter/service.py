"""Virtual routers, management side: offerings and VIPs (ZStack's ``VirtualRouterOffering`` and
``Vip`` APIs). The VR appliance itself, EIPs and port forwardings build on these (not yet here)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from bus.errors import RingstackError, not_found
from mgmt.core.access import forget_sharing, load_owned, load_visible
from mgmt.core.cascade import CascadeRegistry, CascadeRule, announce_deleted
from mgmt.core.db import Database, create_guard
from mgmt.core.events import EventPublisher
from mgmt.core.query import QueryTarget, Relation, run_query
from mgmt.core.quota import check_quota, define_quota, register_usage
from mgmt.core.service import CallContext, Service, handler
from mgmt.services.network.ipam import allocate_ip, release_ips_for
from mgmt.services.vrouter import errors
from schema.api.base import EmptyReply, QueryReply
from schema.api.vrouter import (
    CreateVip,
    CreateVirtualRouterOffering,
    DeleteVip,
    DeleteVirtualRouterOffering,
    QueryVip,
    QueryVirtualRouterOffering,
    VipInventory,
    VipReply,
    VirtualRouterOfferingInventory,
    VirtualRouterOfferingReply,
)
from schema.db.image import Image
from schema.db.network import L3Network, UsedIp
from schema.db.vrouter import Vip, VirtualRouterOffering
from schema.db.zone import Zone

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


class VirtualRouterService(Service):
    name = "vrouter"

    db: Database
    events: EventPublisher
    cascade: CascadeRegistry

    async def start(self) -> None:
        self.cascade.register(OFFERING_RULE)
        self.cascade.register(VIP_RULE)

    async def stop(self) -> None:
        self.cascade.unregister(OFFERING_KIND)
        self.cascade.unregister(VIP_KIND)

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
