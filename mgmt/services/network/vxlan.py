"""VXLAN pools, VNI ranges and VXLAN networks (ZStack's ``plugin/vxlan``).

A pool is an L2 network of type ``L2VxlanNetworkPool``: no bridge of its own, an underlay
interface and VNI ranges. A VXLAN network is an L2 network of type ``L2VxlanNetwork`` with a VNI
from its pool; it is attached to the pool's clusters (and follows later attachments, see
``l2.py``), so L3 networks, IPAM and VM placement treat it like any L2. What a host needs to bridge
it (``vxlan_spec``): the VNI and every VTEP of the clusters it is attached to, one per host (its
management IP).
"""

from __future__ import annotations

import ipaddress

from sqlalchemy import select
from sqlalchemy.orm import Session

from bus.errors import RingstackError, not_found
from mgmt.core.access import load_owned
from mgmt.core.db import Database, create_guard
from mgmt.core.events import EventPublisher
from mgmt.core.query import QueryTarget, run_query
from mgmt.core.service import CallContext, Service, handler
from mgmt.services.network import errors
from mgmt.services.network.common import L2_KIND, l2_inventory, reloaded
from schema.agent import VtepSpec
from schema.api.base import QueryReply
from schema.api.network import L2NetworkInventory, L2NetworkReply
from schema.api.vxlan import (
    CreateL2VxlanNetwork,
    CreateL2VxlanNetworkPool,
    CreateVniRange,
    QueryVniRange,
    VniRangeInventory,
    VniRangeReply,
)
from schema.db.host import Host
from schema.db.network import L2Network, L2NetworkClusterRef
from schema.db.vxlan import L2VxlanNetwork, VniRange
from schema.db.zone import Zone

POOL = "L2VxlanNetworkPool"
NETWORK = "L2VxlanNetwork"
VXLAN_TYPES = (POOL, NETWORK)

RANGE_QUERY = QueryTarget.for_model(VniRange, VniRangeInventory, name="vniRange")


def vxlan_spec(session: Session, l2_uuid: str) -> tuple[int, list[VtepSpec]]:
    """A VXLAN network's VNI and the VTEPs of every host of the clusters it is attached to."""
    row = session.get(L2VxlanNetwork, l2_uuid)
    if row is None:
        raise not_found("VXLAN network", l2_uuid)
    hosts = session.execute(
        select(Host.uuid, Host.management_ip)
        .join(L2NetworkClusterRef, L2NetworkClusterRef.cluster_uuid == Host.cluster_uuid)
        .where(L2NetworkClusterRef.l2_network_uuid == l2_uuid)
        .order_by(Host.uuid)
    ).all()
    vteps = []
    for host_uuid, ip in hosts:
        try:
            ipaddress.IPv4Address(ip)
        except ValueError:  # a host known by name has no VTEP address here yet
            continue
        vteps.append(VtepSpec(host_uuid=host_uuid, vtep_ip=ip))
    return row.vni, vteps


def load_pool(session: Session, uuid: str, ctx: CallContext, *, lock: bool = False) -> L2Network:
    pool = load_owned(session, L2Network, uuid, ctx.account, L2_KIND)
    if pool.type != POOL:
        raise RingstackError(
            errors.NOT_A_VXLAN_POOL,
            f"L2 network {uuid} is a {pool.type}, not an {POOL}",
            details={"uuid": uuid},
        )
    if lock:  # VNI choices of one pool are made one at a time
        session.execute(select(L2Network.uuid).where(L2Network.uuid == uuid).with_for_update())
    return pool


def pool_networks(session: Session, pool_uuid: str) -> list[str]:
    return list(session.scalars(select(L2VxlanNetwork.uuid).where(L2VxlanNetwork.pool_uuid == pool_uuid)))


def _free_vni(session: Session, pool_uuid: str, wanted: int | None) -> int:
    ranges = session.execute(
        select(VniRange.start_vni, VniRange.end_vni)
        .where(VniRange.l2_network_uuid == pool_uuid)
        .order_by(VniRange.start_vni)
    ).all()
    used = set(session.scalars(select(L2VxlanNetwork.vni).where(L2VxlanNetwork.pool_uuid == pool_uuid)))
    if wanted is not None:
        if not any(lo <= wanted <= hi for lo, hi in ranges):
            raise RingstackError(
                errors.VNI_UNAVAILABLE,
                f"VNI {wanted} is in no VNI range of pool {pool_uuid}",
                details={"vni": wanted, "ranges": [list(r) for r in ranges]},
            )
        if wanted in used:
            raise RingstackError(
                errors.VNI_UNAVAILABLE, f"VNI {wanted} of pool {pool_uuid} is taken", details={"vni": wanted}
            )
        return wanted
    for lo, hi in ranges:
        for vni in range(lo, hi + 1):
            if vni not in used:
                return vni
    raise RingstackError(
        errors.VNI_UNAVAILABLE, f"pool {pool_uuid} has no free VNI left", details={"pool": pool_uuid}
    )


class VxlanService(Service):
    name = "vxlan"

    db: Database
    events: EventPublisher

    @handler(CreateL2VxlanNetworkPool)
    async def create_pool(self, msg: CreateL2VxlanNetworkPool, ctx: CallContext) -> L2NetworkReply:
        uuid = ctx.new_resource_uuid(msg)

        def create(session: Session) -> L2NetworkInventory:
            existing = create_guard(session, L2Network, uuid, ctx)
            if existing is not None:
                return l2_inventory(existing)
            if session.get(Zone, msg.zone_uuid) is None:
                raise not_found("zone", msg.zone_uuid)
            row = L2Network(
                uuid=uuid,
                name=msg.name,
                description=msg.description,
                zone_uuid=msg.zone_uuid,
                type=POOL,
                physical_interface=msg.physical_interface,
                vlan=None,
                owner_account_uuid=ctx.account.uuid,
            )
            session.add(row)
            session.flush()
            return l2_inventory(reloaded(session, row))

        inv = await self.db.run(create)
        await self.events.resource_event(L2_KIND, inv.uuid, "created", inv.to_wire())
        return L2NetworkReply(inventory=inv)

    @handler(CreateVniRange)
    async def create_range(self, msg: CreateVniRange, ctx: CallContext) -> VniRangeReply:
        uuid = ctx.new_resource_uuid(msg)

        def create(session: Session) -> VniRangeInventory:
            existing = create_guard(session, VniRange, uuid, ctx)
            if existing is not None:
                return VniRangeInventory.model_validate(existing)
            load_pool(session, msg.l2_network_uuid, ctx, lock=True)
            other = session.scalars(
                select(VniRange).where(
                    VniRange.l2_network_uuid == msg.l2_network_uuid,
                    VniRange.start_vni <= msg.end_vni,
                    VniRange.end_vni >= msg.start_vni,
                )
            ).first()
            if other is not None:
                raise RingstackError(
                    errors.VNI_RANGE_OVERLAP,
                    f"VNIs {msg.start_vni}-{msg.end_vni} overlap range {other.uuid}"
                    f" ({other.start_vni}-{other.end_vni})",
                    details={"vniRangeUuid": other.uuid},
                )
            row = VniRange(
                uuid=uuid,
                name=msg.name,
                description=msg.description,
                l2_network_uuid=msg.l2_network_uuid,
                start_vni=msg.start_vni,
                end_vni=msg.end_vni,
                owner_account_uuid=ctx.account.uuid,
            )
            session.add(row)
            session.flush()
            return VniRangeInventory.model_validate(row)

        inv = await self.db.run(create)
        await self.events.resource_event("vni_range", inv.uuid, "created", inv.to_wire())
        return VniRangeReply(inventory=inv)

    @handler(CreateL2VxlanNetwork)
    async def create_network(self, msg: CreateL2VxlanNetwork, ctx: CallContext) -> L2NetworkReply:
        uuid = ctx.new_resource_uuid(msg)

        def create(session: Session) -> L2NetworkInventory:
            existing = create_guard(session, L2Network, uuid, ctx)
            if existing is not None:
                return l2_inventory(existing)
            pool = load_pool(session, msg.pool_uuid, ctx, lock=True)
            if msg.zone_uuid is not None and msg.zone_uuid != pool.zone_uuid:
                raise RingstackError(
                    errors.CLUSTER_ZONE_MISMATCH,
                    f"pool {pool.uuid} is in zone {pool.zone_uuid}, not {msg.zone_uuid}",
                )
            vni = _free_vni(session, pool.uuid, msg.vni)
            row = L2Network(
                uuid=uuid,
                name=msg.name,
                description=msg.description,
                zone_uuid=pool.zone_uuid,
                type=NETWORK,
                physical_interface=pool.physical_interface,
                vlan=None,
                owner_account_uuid=ctx.account.uuid,
            )
            session.add(row)
            session.flush()
            session.add(L2VxlanNetwork(uuid=uuid, pool_uuid=pool.uuid, vni=vni))
            for cluster in pool.attached_cluster_uuids:  # where the pool is, its networks are
                session.add(L2NetworkClusterRef(l2_network_uuid=uuid, cluster_uuid=cluster))
            session.flush()
            return l2_inventory(reloaded(session, row))

        inv = await self.db.run(create)
        await self.events.resource_event(L2_KIND, inv.uuid, "created", inv.to_wire())
        return L2NetworkReply(inventory=inv)

    @handler(QueryVniRange, serial=False)
    async def query_ranges(self, msg: QueryVniRange, ctx: CallContext) -> QueryReply:
        return await self.db.run(run_query, RANGE_QUERY, msg, ctx.account)
