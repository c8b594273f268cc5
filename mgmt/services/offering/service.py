"""Instance and disk offerings: create, update, enable/disable, delete, query.

Both kinds behave alike, so the handlers share one set of helpers parameterised by the kind.
Offerings belong to the account that creates them; others see them once shared (identity).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from mgmt.core.access import forget_sharing, load_for_delete, load_owned
from mgmt.core.cascade import CascadeRegistry, announce_deleted
from mgmt.core.db import Database, create_guard
from mgmt.core.events import EventPublisher
from mgmt.core.query import QueryTarget, Relation, run_query
from mgmt.core.service import CallContext, Service, handler
from schema.api.base import CreateMessage, DeleteMessage, EmptyReply, Inventory, QueryReply, ResourceMessage
from schema.api.offering import (
    ChangeDiskOfferingState,
    ChangeInstanceOfferingState,
    CreateDiskOffering,
    CreateInstanceOffering,
    DeleteDiskOffering,
    DeleteInstanceOffering,
    DiskOfferingInventory,
    DiskOfferingReply,
    InstanceOfferingInventory,
    InstanceOfferingReply,
    QueryDiskOffering,
    QueryInstanceOffering,
    UpdateDiskOffering,
    UpdateInstanceOffering,
)
from schema.db.offering import DiskOffering, InstanceOffering
from schema.db.vm import VmInstance, Volume


@dataclass(frozen=True)
class Kind:
    name: str  # resource type in events and errors
    model: Any
    inventory: type[Inventory]
    query: QueryTarget


INSTANCE = Kind(
    "instanceOffering",
    InstanceOffering,
    InstanceOfferingInventory,
    QueryTarget.for_model(
        InstanceOffering,
        InstanceOfferingInventory,
        name="instanceOffering",
        relations={"vmInstance": Relation("vmInstance", InstanceOffering.uuid, VmInstance.instance_offering_uuid)},
    ),
)
DISK = Kind(
    "diskOffering",
    DiskOffering,
    DiskOfferingInventory,
    QueryTarget.for_model(
        DiskOffering,
        DiskOfferingInventory,
        name="diskOffering",
        relations={"volume": Relation("volume", DiskOffering.uuid, Volume.disk_offering_uuid)},
    ),
)


class OfferingService(Service):
    name = "offering"

    db: Database
    events: EventPublisher
    cascade: CascadeRegistry

    # ------------------------------------------------------------------ instance offerings

    @handler(CreateInstanceOffering)
    async def create_instance_offering(
        self, msg: CreateInstanceOffering, ctx: CallContext
    ) -> InstanceOfferingReply:
        inv = await self._create(
            INSTANCE,
            msg,
            ctx,
            name=msg.name,
            description=msg.description,
            cpu_num=msg.cpu_num,
            memory_size=msg.memory_size,
            allocator_strategy=msg.allocator_strategy,
            type="UserVm",
        )
        return InstanceOfferingReply(inventory=inv)

    @handler(UpdateInstanceOffering)
    async def update_instance_offering(
        self, msg: UpdateInstanceOffering, ctx: CallContext
    ) -> InstanceOfferingReply:
        inv = await self._update(INSTANCE, msg, ctx, ("name", "description", "allocator_strategy"))
        return InstanceOfferingReply(inventory=inv)

    @handler(ChangeInstanceOfferingState)
    async def change_instance_offering_state(
        self, msg: ChangeInstanceOfferingState, ctx: CallContext
    ) -> InstanceOfferingReply:
        return InstanceOfferingReply(inventory=await self._change_state(INSTANCE, msg, ctx, msg.state_event))

    @handler(DeleteInstanceOffering)
    async def delete_instance_offering(self, msg: DeleteInstanceOffering, ctx: CallContext) -> EmptyReply:
        return await self._delete(INSTANCE, msg, ctx)

    @handler(QueryInstanceOffering, serial=False)
    async def query_instance_offering(self, msg: QueryInstanceOffering, ctx: CallContext) -> QueryReply:
        return await self.db.run(run_query, INSTANCE.query, msg, ctx.account)

    # ------------------------------------------------------------------ disk offerings

    @handler(CreateDiskOffering)
    async def create_disk_offering(self, msg: CreateDiskOffering, ctx: CallContext) -> DiskOfferingReply:
        inv = await self._create(
            DISK,
            msg,
            ctx,
            name=msg.name,
            description=msg.description,
            disk_size=msg.disk_size,
            allocator_strategy=msg.allocator_strategy,
        )
        return DiskOfferingReply(inventory=inv)

    @handler(UpdateDiskOffering)
    async def update_disk_offering(self, msg: UpdateDiskOffering, ctx: CallContext) -> DiskOfferingReply:
        inv = await self._update(DISK, msg, ctx, ("name", "description", "allocator_strategy"))
        return DiskOfferingReply(inventory=inv)

    @handler(ChangeDiskOfferingState)
    async def change_disk_offering_state(
        self, msg: ChangeDiskOfferingState, ctx: CallContext
    ) -> DiskOfferingReply:
        return DiskOfferingReply(inventory=await self._change_state(DISK, msg, ctx, msg.state_event))

    @handler(DeleteDiskOffering)
    async def delete_disk_offering(self, msg: DeleteDiskOffering, ctx: CallContext) -> EmptyReply:
        return await self._delete(DISK, msg, ctx)

    @handler(QueryDiskOffering, serial=False)
    async def query_disk_offering(self, msg: QueryDiskOffering, ctx: CallContext) -> QueryReply:
        return await self.db.run(run_query, DISK.query, msg, ctx.account)

    # ------------------------------------------------------------------ shared

    async def _create(self, kind: Kind, msg: CreateMessage, ctx: CallContext, **fields: Any) -> Any:
        uuid = ctx.new_resource_uuid(msg)

        def create(session: Session) -> Inventory:
            existing = create_guard(session, kind.model, uuid, ctx)
            if existing is not None:
                return kind.inventory.model_validate(existing)
            row = kind.model(
                uuid=uuid,
                state="Enabled",
                owner_account_uuid=ctx.account.uuid,
                **fields,
            )
            session.add(row)
            session.flush()
            return kind.inventory.model_validate(row)

        inv = await self.db.run(create)
        await self.events.resource_event(kind.name, inv.uuid, "created", inv.to_wire())
        return inv

    async def _update(
        self, kind: Kind, msg: ResourceMessage, ctx: CallContext, names: tuple[str, ...]
    ) -> Any:
        def update(session: Session) -> Inventory:
            row = load_owned(session, kind.model, msg.uuid, ctx.account, kind.name)
            for name in names:
                value = getattr(msg, name)
                if value is not None:
                    setattr(row, name, value)
            session.flush()
            return kind.inventory.model_validate(row)

        inv = await self.db.run(update)
        await self.events.resource_event(kind.name, inv.uuid, "updated", inv.to_wire())
        return inv

    async def _change_state(self, kind: Kind, msg: ResourceMessage, ctx: CallContext, event: str) -> Any:
        new_state = "Enabled" if event == "enable" else "Disabled"

        def change(session: Session) -> tuple[Inventory, bool]:
            row = load_owned(session, kind.model, msg.uuid, ctx.account, kind.name)
            changed = row.state != new_state
            row.state = new_state
            session.flush()
            return kind.inventory.model_validate(row), changed

        inv, changed = await self.db.run(change)
        if changed:
            await self.events.resource_event(kind.name, inv.uuid, "state", inv.to_wire())
        return inv

    async def _delete(self, kind: Kind, msg: DeleteMessage, ctx: CallContext) -> EmptyReply:
        """Deleting an offering that is already gone succeeds, so a retried delete is safe. VMs
        keep their size when their offering goes (as in ZStack)."""

        def remove(session: Session) -> dict[str, list[str]] | None:
            row = load_for_delete(session, kind.model, msg.uuid, ctx.account, kind.name)
            if row is None:
                return None
            cascaded = self.cascade.delete(session, kind.name, msg.uuid, msg.delete_mode)
            session.delete(row)
            forget_sharing(session, [msg.uuid])
            return cascaded

        cascaded = await self.db.run(remove)
        if cascaded is not None:
            await announce_deleted(self.events, cascaded, kind.name, msg.uuid)
        return EmptyReply()
