"""L2 networks: create (no-VLAN, VLAN), update, delete, attach to / detach from clusters, query.

Every mutating API here is admin-only (the gateway refuses normal accounts). Queries show a
normal account the L2s shared with it (it needs one to create its own L3 on).
"""

from __future__ import annotations

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from bus.errors import RingstackError, not_found
from mgmt.core.access import load_owned, load_visible
from mgmt.core.cascade import CascadeRegistry, announce_deleted
from mgmt.core.db import Database, create_guard
from mgmt.core.events import EventPublisher
from mgmt.core.query import QueryTarget, Relation, run_query
from mgmt.core.service import CallContext, Service, handler
from mgmt.services.network import errors, vxlan
from mgmt.services.network.common import (
    L2_KIND,
    L2_PAGE,
    L2_RULE,
    delete_l2s,
    l2_inventory,
    lock_l2s,
    reloaded,
)
from schema.api.base import EmptyReply, QueryReply
from schema.api.network import (
    AttachL2NetworkToCluster,
    CreateL2NoVlanNetwork,
    CreateL2VlanNetwork,
    DeleteL2Network,
    DetachL2NetworkFromCluster,
    L2NetworkInventory,
    L2NetworkReply,
    QueryL2Network,
    UpdateL2Network,
)
from schema.db.cluster import Cluster
from schema.db.network import L2Network, L2NetworkClusterRef, L3Network
from schema.db.zone import Zone

QUERY = QueryTarget.for_model(
    L2Network,
    L2NetworkInventory,
    name="l2Network",
    relations={
        "zone": Relation("zone", L2Network.zone_uuid, Zone.uuid),
        "cluster": Relation(
            "cluster",
            L2Network.uuid,
            Cluster.uuid,
            through=(L2NetworkClusterRef.l2_network_uuid, L2NetworkClusterRef.cluster_uuid),
        ),
        "l3Network": Relation("l3Network", L2Network.uuid, L3Network.l2_network_uuid),
    },
)
VLAN_CONSTRAINT = "uq_l2_network_zone_uuid_physical_interface_vlan"


def _vlan_in_use(zone_uuid: str, interface: str, vlan: int, other: str | None) -> RingstackError:
    held_by = f" (L2 network {other})" if other else ""
    return RingstackError(
        errors.VLAN_IN_USE,
        f"VLAN {vlan} on {interface} in zone {zone_uuid} is already used{held_by}",
        details={"zoneUuid": zone_uuid, "physicalInterface": interface, "vlan": vlan, "l2NetworkUuid": other},
    )


def _insert_l2(session: Session, row: L2Network) -> None:
    """Insert in a savepoint, so a VLAN taken by a concurrent create becomes L2.VLAN_IN_USE."""
    try:
        with session.begin_nested():
            session.add(row)
            session.flush()
    except IntegrityError as exc:
        constraint = getattr(getattr(exc.orig, "diag", None), "constraint_name", None)
        if constraint == VLAN_CONSTRAINT and row.vlan is not None:
            raise _vlan_in_use(row.zone_uuid, row.physical_interface, row.vlan, None) from None
        raise


def _check_interface_free(session: Session, l2: L2Network, cluster_uuid: str) -> None:
    """A cluster bridges one untagged network per interface (and one per interface+VLAN)."""
    stmt = (
        select(L2Network.uuid)
        .join(L2NetworkClusterRef, L2NetworkClusterRef.l2_network_uuid == L2Network.uuid)
        .where(
            L2NetworkClusterRef.cluster_uuid == cluster_uuid,
            L2Network.physical_interface == l2.physical_interface,
            L2Network.vlan.is_(None) if l2.vlan is None else L2Network.vlan == l2.vlan,
        )
    )
    other = session.scalars(stmt).first()
    if other is not None:
        tag = "untagged" if l2.vlan is None else f"VLAN {l2.vlan}"
        raise RingstackError(
            errors.INTERFACE_CONFLICT,
            f"cluster {cluster_uuid} already has L2 network {other} on {l2.physical_interface} ({tag})",
            details={"clusterUuid": cluster_uuid, "l2NetworkUuid": other},
        )


class L2NetworkService(Service):
    name = "l2network"

    db: Database
    events: EventPublisher
    cascade: CascadeRegistry

    async def start(self) -> None:
        self.cascade.register(L2_RULE)

    async def stop(self) -> None:
        self.cascade.unregister(L2_KIND)

    @handler(CreateL2NoVlanNetwork)
    async def create_no_vlan(self, msg: CreateL2NoVlanNetwork, ctx: CallContext) -> L2NetworkReply:
        return await self._create(msg, ctx, "L2NoVlanNetwork", None)

    @handler(CreateL2VlanNetwork)
    async def create_vlan(self, msg: CreateL2VlanNetwork, ctx: CallContext) -> L2NetworkReply:
        return await self._create(msg, ctx, "L2VlanNetwork", msg.vlan)

    async def _create(
        self,
        msg: CreateL2NoVlanNetwork | CreateL2VlanNetwork,
        ctx: CallContext,
        l2_type: str,
        vlan: int | None,
    ) -> L2NetworkReply:
        uuid = ctx.new_resource_uuid(msg)

        def create(session: Session) -> L2NetworkInventory:
            existing = create_guard(session, L2Network, uuid, ctx)
            if existing is not None:
                return l2_inventory(existing)
            if session.get(Zone, msg.zone_uuid) is None:
                raise not_found("zone", msg.zone_uuid)
            if vlan is not None:
                other = session.scalars(
                    select(L2Network.uuid).where(
                        L2Network.zone_uuid == msg.zone_uuid,
                        L2Network.physical_interface == msg.physical_interface,
                        L2Network.vlan == vlan,
                    )
                ).first()
                if other is not None:
                    raise _vlan_in_use(msg.zone_uuid, msg.physical_interface, vlan, other)
            row = L2Network(
                uuid=uuid,
                name=msg.name,
                description=msg.description,
                zone_uuid=msg.zone_uuid,
                type=l2_type,
                physical_interface=msg.physical_interface,
                vlan=vlan,
                owner_account_uuid=ctx.account.uuid,
            )
            _insert_l2(session, row)
            return l2_inventory(reloaded(session, row))

        inv = await self.db.run(create)
        await self.events.resource_event(L2_KIND, inv.uuid, "created", inv.to_wire())
        return L2NetworkReply(inventory=inv)

    @handler(UpdateL2Network)
    async def update(self, msg: UpdateL2Network, ctx: CallContext) -> L2NetworkReply:
        def update(session: Session) -> L2NetworkInventory:
            row = load_owned(session, L2Network, msg.uuid, ctx.account, L2_KIND)
            if msg.name is not None:
                row.name = msg.name
            if msg.description is not None:
                row.description = msg.description
            return l2_inventory(reloaded(session, row))

        inv = await self.db.run(update)
        await self.events.resource_event(L2_KIND, inv.uuid, "updated", inv.to_wire())
        return L2NetworkReply(inventory=inv)

    @handler(DeleteL2Network)
    async def delete(self, msg: DeleteL2Network, ctx: CallContext) -> EmptyReply:
        """Deleting an L2 network that is already gone succeeds, so a retried delete is safe."""

        def delete_(session: Session) -> dict[str, list[str]] | None:
            if not lock_l2s(session, L2Network.uuid == msg.uuid):
                return None
            l2 = load_owned(session, L2Network, msg.uuid, ctx.account, L2_KIND)
            networks = vxlan.pool_networks(session, l2.uuid) if l2.type == vxlan.POOL else []
            if networks:
                raise RingstackError(
                    errors.POOL_IN_USE,
                    f"VXLAN pool {l2.uuid} still has {len(networks)} VXLAN networks; delete them first",
                    details={"l2NetworkUuids": networks},
                )
            cascaded = self.cascade.delete(session, L2_KIND, msg.uuid, msg.delete_mode)
            delete_l2s(session, [msg.uuid])
            return cascaded

        cascaded = await self.db.run(delete_)
        if cascaded is not None:
            await announce_deleted(self.events, cascaded, L2_KIND, msg.uuid)
        return EmptyReply()

    @handler(AttachL2NetworkToCluster)
    async def attach(self, msg: AttachL2NetworkToCluster, ctx: CallContext) -> L2NetworkReply:
        """Attaching again is a no-op (no event), so a retry is safe."""

        def attach(session: Session) -> tuple[L2NetworkInventory, bool]:
            l2 = load_owned(session, L2Network, msg.l2_network_uuid, ctx.account, L2_KIND)
            cluster = load_visible(session, Cluster, msg.cluster_uuid, ctx.account, "cluster")
            if cluster.zone_uuid != l2.zone_uuid:
                raise RingstackError(
                    errors.CLUSTER_ZONE_MISMATCH,
                    f"cluster {cluster.uuid} is in zone {cluster.zone_uuid}, "
                    f"L2 network {l2.uuid} in zone {l2.zone_uuid}",
                    details={"clusterZoneUuid": cluster.zone_uuid, "l2NetworkZoneUuid": l2.zone_uuid},
                )
            if session.get(L2NetworkClusterRef, (l2.uuid, cluster.uuid)) is not None:
                return l2_inventory(l2), False
            if l2.type not in vxlan.VXLAN_TYPES:  # VXLAN shares its underlay interface freely
                _check_interface_free(session, l2, cluster.uuid)
            session.add(L2NetworkClusterRef(l2_network_uuid=l2.uuid, cluster_uuid=cluster.uuid))
            if l2.type == vxlan.POOL:  # the pool's networks go where it goes
                for network in vxlan.pool_networks(session, l2.uuid):
                    if session.get(L2NetworkClusterRef, (network, cluster.uuid)) is None:
                        session.add(L2NetworkClusterRef(l2_network_uuid=network, cluster_uuid=cluster.uuid))
            return l2_inventory(reloaded(session, l2)), True

        inv, changed = await self.db.run(attach)
        if changed:
            await self.events.resource_event(L2_KIND, inv.uuid, "attached", inv.to_wire())
        return L2NetworkReply(inventory=inv)

    @handler(DetachL2NetworkFromCluster)
    async def detach(self, msg: DetachL2NetworkFromCluster, ctx: CallContext) -> L2NetworkReply:
        """Detaching what is not attached is a no-op (no event), so a retry is safe."""

        def detach(session: Session) -> tuple[L2NetworkInventory, bool]:
            l2 = load_owned(session, L2Network, msg.l2_network_uuid, ctx.account, L2_KIND)
            load_visible(session, Cluster, msg.cluster_uuid, ctx.account, "cluster")
            members = (
                [l2.uuid, *vxlan.pool_networks(session, l2.uuid)] if l2.type == vxlan.POOL else [l2.uuid]
            )
            gone = session.execute(
                delete(L2NetworkClusterRef)
                .where(
                    L2NetworkClusterRef.l2_network_uuid.in_(members),
                    L2NetworkClusterRef.cluster_uuid == msg.cluster_uuid,
                )
                .returning(L2NetworkClusterRef.cluster_uuid)
            ).first()
            return l2_inventory(reloaded(session, l2)), gone is not None

        inv, changed = await self.db.run(detach)
        if changed:
            await self.events.resource_event(L2_KIND, inv.uuid, "detached", inv.to_wire())
        return L2NetworkReply(inventory=inv)

    @handler(QueryL2Network, serial=False)
    async def query(self, msg: QueryL2Network, ctx: CallContext) -> QueryReply:
        return await self.db.run(run_query, QUERY, msg, ctx.account, L2_PAGE)
