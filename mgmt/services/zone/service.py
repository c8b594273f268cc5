"""Zones: create, update, enable/disable, delete, query."""

from __future__ import annotations

from sqlalchemy.orm import Session

from mgmt.core.cascade import CascadeRegistry
from mgmt.core.db import Database, create_guard
from mgmt.core.events import EventPublisher
from mgmt.core.query import QueryTarget, Relation, run_query
from mgmt.core.resources import change_enabled_state, update_name_description
from mgmt.core.service import CallContext, Service, handler
from schema.api.base import EmptyReply, QueryReply
from schema.api.zone import (
    ChangeZoneState,
    CreateZone,
    DeleteZone,
    QueryZone,
    UpdateZone,
    ZoneInventory,
    ZoneReply,
)
from schema.db.cluster import Cluster
from schema.db.host import Host
from schema.db.network import L2Network, L3Network
from schema.db.storage import BackupStorage, BackupStorageZoneRef, PrimaryStorage
from schema.db.vm import VmInstance
from schema.db.zone import Zone

QUERY = QueryTarget.for_model(
    Zone,
    ZoneInventory,
    name="zone",
    relations={
        "cluster": Relation("cluster", Zone.uuid, Cluster.zone_uuid),
        "host": Relation("host", Zone.uuid, Host.zone_uuid),
        "vmInstance": Relation("vmInstance", Zone.uuid, VmInstance.zone_uuid),
        "primaryStorage": Relation("primaryStorage", Zone.uuid, PrimaryStorage.zone_uuid),
        "backupStorage": Relation(
            "backupStorage",
            Zone.uuid,
            BackupStorage.uuid,
            through=(BackupStorageZoneRef.zone_uuid, BackupStorageZoneRef.backup_storage_uuid),
        ),
        "l2Network": Relation("l2Network", Zone.uuid, L2Network.zone_uuid),
        "l3Network": Relation("l3Network", Zone.uuid, L3Network.zone_uuid),
    },
)


def _inventory(zone: Zone) -> ZoneInventory:
    return ZoneInventory.model_validate(zone, from_attributes=True)


class ZoneService(Service):
    name = "zone"

    db: Database
    events: EventPublisher
    cascade: CascadeRegistry

    @handler(CreateZone)
    async def create_zone(self, msg: CreateZone, ctx: CallContext) -> ZoneReply:
        uuid = ctx.new_resource_uuid(msg)

        def create(session: Session) -> ZoneInventory:
            existing = create_guard(session, Zone, uuid, ctx)
            if existing is not None:
                return _inventory(existing)
            zone = Zone(
                uuid=uuid,
                name=msg.name,
                description=msg.description,
                state="Enabled",
                owner_account_uuid=ctx.account.uuid,
            )
            session.add(zone)
            session.flush()
            return _inventory(zone)

        inv = await self.db.run(create)
        await self.events.resource_event("zone", inv.uuid, "created", inv.to_wire())
        return ZoneReply(inventory=inv)

    @handler(UpdateZone)
    async def update_zone(self, msg: UpdateZone, ctx: CallContext) -> ZoneReply:
        inv = await update_name_description(
            self.db, self.events, Zone, "zone", msg.uuid, ctx.account, _inventory, msg.name, msg.description
        )
        return ZoneReply(inventory=inv)

    @handler(ChangeZoneState)
    async def change_zone_state(self, msg: ChangeZoneState, ctx: CallContext) -> ZoneReply:
        inv = await change_enabled_state(
            self.db, self.events, Zone, "zone", msg.uuid, ctx.account, _inventory, msg.state_event
        )
        return ZoneReply(inventory=inv)

    @handler(DeleteZone)
    async def delete_zone(self, msg: DeleteZone, ctx: CallContext) -> EmptyReply:
        """Deleting a zone that is already gone succeeds, so a retried delete is safe."""

        def delete(session: Session) -> dict[str, list[str]] | None:
            zone = session.get(Zone, msg.uuid)
            if zone is None:
                return None
            cascaded = self.cascade.delete(session, "zone", msg.uuid, msg.delete_mode)
            session.delete(zone)
            return cascaded

        cascaded = await self.db.run(delete)
        if cascaded is not None:
            for kind, uuids in cascaded.items():
                for uuid in uuids:
                    await self.events.resource_event(kind, uuid, "deleted")
            await self.events.resource_event("zone", msg.uuid, "deleted")
        return EmptyReply()

    @handler(QueryZone, serial=False)
    async def query_zone(self, msg: QueryZone, ctx: CallContext) -> QueryReply:
        return await self.db.run(run_query, QUERY, msg, ctx.account)
