"""Primary storage handlers: add (local, NFS, shared mount point), attach/detach to clusters, update, state, delete, query."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import delete, select, tuple_
from sqlalchemy.orm import Session

from bus.errors import RingstackError
from mgmt.core.access import load_visible
from mgmt.core.cascade import CascadeRegistry, CascadeRule, announce_deleted
from mgmt.core.db import Database, create_guard
from mgmt.core.events import EventPublisher
from mgmt.core.query import QueryTarget, Relation, run_query
from mgmt.core.resources import change_enabled_state, update_name_description
from mgmt.core.service import CallContext, handler
from mgmt.services.storage.errors import StorageError
from mgmt.services.storage.links import pair_ids, split_pairs
from schema.api.base import EmptyReply, QueryReply
from schema.api.storage import (
    AddLocalPrimaryStorage,
    AddNfsPrimaryStorage,
    AddSharedMountPointPrimaryStorage,
    AttachPrimaryStorageToCluster,
    ChangePrimaryStorageState,
    DeletePrimaryStorage,
    DetachPrimaryStorageFromCluster,
    PrimaryStorageInventory,
    PrimaryStorageReply,
    QueryPrimaryStorage,
    UpdatePrimaryStorage,
)
from schema.db.cluster import Cluster
from schema.db.storage import PrimaryStorage, PrimaryStorageClusterRef
from schema.db.vm import Volume
from schema.db.zone import Zone

KIND = "primaryStorage"
QUERY = QueryTarget.for_model(
    PrimaryStorage,
    PrimaryStorageInventory,
    name="primaryStorage",
    relations={
        "zone": Relation("zone", PrimaryStorage.zone_uuid, Zone.uuid),
        "cluster": Relation(
            "cluster",
            PrimaryStorage.uuid,
            Cluster.uuid,
            through=(PrimaryStorageClusterRef.primary_storage_uuid, PrimaryStorageClusterRef.cluster_uuid),
        ),
        "volume": Relation("volume", PrimaryStorage.uuid, Volume.primary_storage_uuid),
    },
)


def _inventory(ps: PrimaryStorage) -> PrimaryStorageInventory:
    return PrimaryStorageInventory.model_validate(ps, from_attributes=True)


# ---------------------------------------------------------------- cascade rules


def _ps_of_zones(session: Session, parent_kind: str, zone_uuids: Sequence[str]) -> list[str]:
    return list(session.scalars(select(PrimaryStorage.uuid).where(PrimaryStorage.zone_uuid.in_(zone_uuids))))


def _delete_ps(session: Session, uuids: Sequence[str]) -> None:
    session.execute(delete(PrimaryStorage).where(PrimaryStorage.uuid.in_(uuids)))


def _cluster_refs(session: Session, parent_kind: str, uuids: Sequence[str]) -> list[str]:
    ref = PrimaryStorageClusterRef
    column = ref.cluster_uuid if parent_kind == "cluster" else ref.primary_storage_uuid
    rows = session.execute(select(ref.primary_storage_uuid, ref.cluster_uuid).where(column.in_(uuids)))
    return pair_ids((ps, cluster) for ps, cluster in rows)


def _delete_cluster_refs(session: Session, ids: Sequence[str]) -> None:
    ref = PrimaryStorageClusterRef
    session.execute(
        delete(ref).where(tuple_(ref.primary_storage_uuid, ref.cluster_uuid).in_(split_pairs(ids)))
    )


PRIMARY_STORAGE_RULES = (
    CascadeRule(KIND, ("zone",), _ps_of_zones, _delete_ps),
    # An attachment goes with its cluster, but (as in ZStack) keeps its storage from being
    # deleted in Permissive mode: detach first, or use Enforcing.
    CascadeRule(
        "primaryStorageClusterRef",
        ("cluster", KIND),
        _cluster_refs,
        _delete_cluster_refs,
        vetoes=(KIND,),
        resource=False,
    ),
)


def _check_url_free(session: Session, zone_uuid: str, ps_type: str, url: str) -> None:
    taken = session.scalars(
        select(PrimaryStorage.uuid).where(
            PrimaryStorage.zone_uuid == zone_uuid, PrimaryStorage.type == ps_type, PrimaryStorage.url == url
        )
    ).first()
    if taken is not None:
        raise RingstackError(
            StorageError.URL_IN_USE,
            f"primary storage {taken} in zone {zone_uuid} already uses {url}",
            details={"uuid": taken, "url": url},
        )


class PrimaryStorageHandlers:
    db: Database
    events: EventPublisher
    cascade: CascadeRegistry

    @handler(AddLocalPrimaryStorage)
    async def add_local_primary_storage(
        self, msg: AddLocalPrimaryStorage, ctx: CallContext
    ) -> PrimaryStorageReply:
        return await self._add_primary_storage(msg, ctx, "LocalStorage", msg.total_capacity)

    @handler(AddNfsPrimaryStorage)
    async def add_nfs_primary_storage(
        self, msg: AddNfsPrimaryStorage, ctx: CallContext
    ) -> PrimaryStorageReply:
        return await self._add_primary_storage(msg, ctx, "NFS", msg.total_capacity)

    @handler(AddSharedMountPointPrimaryStorage)
    async def add_shared_mount_point_primary_storage(
        self, msg: AddSharedMountPointPrimaryStorage, ctx: CallContext
    ) -> PrimaryStorageReply:
        """Hosts keep volumes in it as in a local directory (the agent mounts nothing); what differs
        from local storage is that every host of its clusters sees the same files, so a VM on it
        may run on, and migrate to, any of them."""
        return await self._add_primary_storage(msg, ctx, "SharedMountPoint", msg.total_capacity)

    async def _add_primary_storage(
        self,
        msg: AddLocalPrimaryStorage | AddNfsPrimaryStorage | AddSharedMountPointPrimaryStorage,
        ctx: CallContext,
        ps_type: str,
        total: int,
    ) -> PrimaryStorageReply:
        uuid = ctx.new_resource_uuid(msg)

        def create(session: Session) -> PrimaryStorageInventory:
            existing = create_guard(session, PrimaryStorage, uuid, ctx)
            if existing is not None:
                return _inventory(existing)
            load_visible(session, Zone, msg.zone_uuid, ctx.account, "zone")
            _check_url_free(session, msg.zone_uuid, ps_type, msg.url)
            ps = PrimaryStorage(
                uuid=uuid,
                name=msg.name,
                description=msg.description,
                zone_uuid=msg.zone_uuid,
                type=ps_type,
                url=msg.url,
                state="Enabled",
                # No agent checks it yet (hosts mount/prepare it when they connect, a later issue).
                status="Connected",
                total_capacity=total,
                available_capacity=total,
                owner_account_uuid=ctx.account.uuid,
            )
            session.add(ps)
            session.flush()
            return _inventory(ps)

        inv = await self.db.run(create)
        await self.events.resource_event(KIND, inv.uuid, "created", inv.to_wire())
        return PrimaryStorageReply(inventory=inv)

    @handler(AttachPrimaryStorageToCluster)
    async def attach_primary_storage(
        self, msg: AttachPrimaryStorageToCluster, ctx: CallContext
    ) -> PrimaryStorageReply:
        """Attaching twice is a no-op, so a retried attach is safe."""

        def attach(session: Session) -> tuple[PrimaryStorageInventory, bool]:
            ps = load_visible(session, PrimaryStorage, msg.primary_storage_uuid, ctx.account, KIND)
            cluster = load_visible(session, Cluster, msg.cluster_uuid, ctx.account, "cluster")
            if cluster.zone_uuid != ps.zone_uuid:
                raise RingstackError(
                    StorageError.ZONE_MISMATCH,
                    f"primary storage {ps.uuid} is in zone {ps.zone_uuid}, cluster {cluster.uuid} in zone"
                    f" {cluster.zone_uuid}; they must be in the same zone",
                    details={"zoneUuid": ps.zone_uuid, "clusterZoneUuid": cluster.zone_uuid},
                )
            if cluster.uuid in ps.attached_cluster_uuids:
                return _inventory(ps), False
            session.add(PrimaryStorageClusterRef(primary_storage_uuid=ps.uuid, cluster_uuid=cluster.uuid))
            session.flush()
            session.refresh(ps, ["cluster_refs"])
            return _inventory(ps), True

        inv, changed = await self.db.run(attach)
        if changed:
            await self.events.resource_event(KIND, inv.uuid, "attached", inv.to_wire())
        return PrimaryStorageReply(inventory=inv)

    @handler(DetachPrimaryStorageFromCluster)
    async def detach_primary_storage(
        self, msg: DetachPrimaryStorageFromCluster, ctx: CallContext
    ) -> PrimaryStorageReply:
        """Detaching what is not attached is a no-op, so a retried detach is safe.

        Volumes (a later issue) will make a storage in use by a cluster's VMs refuse to detach.
        """

        def detach(session: Session) -> tuple[PrimaryStorageInventory, bool]:
            ps = load_visible(session, PrimaryStorage, msg.primary_storage_uuid, ctx.account, KIND)
            ref = session.get(PrimaryStorageClusterRef, (ps.uuid, msg.cluster_uuid))
            if ref is None:
                return _inventory(ps), False
            session.delete(ref)
            session.flush()
            session.refresh(ps, ["cluster_refs"])
            return _inventory(ps), True

        inv, changed = await self.db.run(detach)
        if changed:
            await self.events.resource_event(KIND, inv.uuid, "detached", inv.to_wire())
        return PrimaryStorageReply(inventory=inv)

    @handler(UpdatePrimaryStorage)
    async def update_primary_storage(
        self, msg: UpdatePrimaryStorage, ctx: CallContext
    ) -> PrimaryStorageReply:
        inv = await update_name_description(
            self.db,
            self.events,
            PrimaryStorage,
            KIND,
            msg.uuid,
            ctx.account,
            _inventory,
            msg.name,
            msg.description,
        )
        return PrimaryStorageReply(inventory=inv)

    @handler(ChangePrimaryStorageState)
    async def change_primary_storage_state(
        self, msg: ChangePrimaryStorageState, ctx: CallContext
    ) -> PrimaryStorageReply:
        inv = await change_enabled_state(
            self.db, self.events, PrimaryStorage, KIND, msg.uuid, ctx.account, _inventory, msg.state_event
        )
        return PrimaryStorageReply(inventory=inv)

    @handler(DeletePrimaryStorage)
    async def delete_primary_storage(self, msg: DeletePrimaryStorage, ctx: CallContext) -> EmptyReply:
        """Deleting a storage that is already gone succeeds, so a retried delete is safe."""

        def remove(session: Session) -> dict[str, list[str]] | None:
            ps = session.get(PrimaryStorage, msg.uuid)
            if ps is None:
                return None
            cascaded = self.cascade.delete(session, KIND, msg.uuid, msg.delete_mode)
            session.delete(ps)
            return cascaded

        cascaded = await self.db.run(remove)
        if cascaded is not None:
            await announce_deleted(self.events, cascaded, KIND, msg.uuid)
        return EmptyReply()

    @handler(QueryPrimaryStorage, serial=False)
    async def query_primary_storage(self, msg: QueryPrimaryStorage, ctx: CallContext) -> QueryReply:
        return await self.db.run(run_query, QUERY, msg, ctx.account)
