"""Clusters: create, update, enable/disable, delete (with cascade), query. Admin only."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from mgmt.core.access import load_visible
from mgmt.core.cascade import CascadeRegistry, CascadeRule, announce_deleted
from mgmt.core.db import Database, create_guard
from mgmt.core.events import EventPublisher
from mgmt.core.query import QueryTarget, Relation, run_query
from mgmt.core.resources import change_enabled_state, update_name_description
from mgmt.core.service import CallContext, Service, handler
from schema.api.base import EmptyReply, QueryReply
from schema.api.cluster import (
    ChangeClusterState,
    ClusterInventory,
    ClusterReply,
    CreateCluster,
    DeleteCluster,
    QueryCluster,
    UpdateCluster,
)
from schema.db.cluster import Cluster
from schema.db.host import Host
from schema.db.network import L2Network, L2NetworkClusterRef
from schema.db.storage import PrimaryStorage, PrimaryStorageClusterRef
from schema.db.vm import VmInstance
from schema.db.zone import Zone

QUERY = QueryTarget.for_model(
    Cluster,
    ClusterInventory,
    name="cluster",
    relations={
        "zone": Relation("zone", Cluster.zone_uuid, Zone.uuid),
        "host": Relation("host", Cluster.uuid, Host.cluster_uuid),
        "vmInstance": Relation("vmInstance", Cluster.uuid, VmInstance.cluster_uuid),
        "l2Network": Relation(
            "l2Network",
            Cluster.uuid,
            L2Network.uuid,
            through=(L2NetworkClusterRef.cluster_uuid, L2NetworkClusterRef.l2_network_uuid),
        ),
        "primaryStorage": Relation(
            "primaryStorage",
            Cluster.uuid,
            PrimaryStorage.uuid,
            through=(PrimaryStorageClusterRef.cluster_uuid, PrimaryStorageClusterRef.primary_storage_uuid),
        ),
    },
)


def _inventory(cluster: Cluster) -> ClusterInventory:
    return ClusterInventory.model_validate(cluster, from_attributes=True)


def _clusters_of(session: Session, parent_kind: str, zone_uuids: Sequence[str]) -> list[str]:
    return list(session.scalars(select(Cluster.uuid).where(Cluster.zone_uuid.in_(zone_uuids))))


def _delete_clusters(session: Session, uuids: Sequence[str]) -> None:
    session.execute(delete(Cluster).where(Cluster.uuid.in_(uuids)))


CLUSTER_RULE = CascadeRule("cluster", ("zone",), _clusters_of, _delete_clusters)


class ClusterService(Service):
    name = "cluster"

    db: Database
    events: EventPublisher
    cascade: CascadeRegistry

    async def start(self) -> None:
        self.cascade.register(CLUSTER_RULE)

    async def stop(self) -> None:
        self.cascade.unregister(CLUSTER_RULE.kind)

    @handler(CreateCluster)
    async def create_cluster(self, msg: CreateCluster, ctx: CallContext) -> ClusterReply:
        uuid = ctx.new_resource_uuid(msg)

        def create(session: Session) -> ClusterInventory:
            existing = create_guard(session, Cluster, uuid, ctx)
            if existing is not None:
                return _inventory(existing)
            load_visible(session, Zone, msg.zone_uuid, ctx.account, "zone")
            cluster = Cluster(
                uuid=uuid,
                name=msg.name,
                description=msg.description,
                zone_uuid=msg.zone_uuid,
                hypervisor_type=msg.hypervisor_type,
                state="Enabled",
                owner_account_uuid=ctx.account.uuid,
            )
            session.add(cluster)
            session.flush()
            return _inventory(cluster)

        inv = await self.db.run(create)
        await self.events.resource_event("cluster", inv.uuid, "created", inv.to_wire())
        return ClusterReply(inventory=inv)

    @handler(UpdateCluster)
    async def update_cluster(self, msg: UpdateCluster, ctx: CallContext) -> ClusterReply:
        inv = await update_name_description(
            self.db,
            self.events,
            Cluster,
            "cluster",
            msg.uuid,
            ctx.account,
            _inventory,
            msg.name,
            msg.description,
        )
        return ClusterReply(inventory=inv)

    @handler(ChangeClusterState)
    async def change_cluster_state(self, msg: ChangeClusterState, ctx: CallContext) -> ClusterReply:
        inv = await change_enabled_state(
            self.db, self.events, Cluster, "cluster", msg.uuid, ctx.account, _inventory, msg.state_event
        )
        return ClusterReply(inventory=inv)

    @handler(DeleteCluster)
    async def delete_cluster(self, msg: DeleteCluster, ctx: CallContext) -> EmptyReply:
        """Deleting a cluster that is already gone succeeds, so a retried delete is safe."""

        def remove(session: Session) -> dict[str, list[str]] | None:
            cluster = session.get(Cluster, msg.uuid)
            if cluster is None:
                return None
            cascaded = self.cascade.delete(session, "cluster", msg.uuid, msg.delete_mode)
            session.delete(cluster)
            return cascaded

        cascaded = await self.db.run(remove)
        if cascaded is not None:
            await announce_deleted(self.events, cascaded, "cluster", msg.uuid)
        return EmptyReply()

    @handler(QueryCluster, serial=False)
    async def query_cluster(self, msg: QueryCluster, ctx: CallContext) -> QueryReply:
        return await self.db.run(run_query, QUERY, msg, ctx.account)
