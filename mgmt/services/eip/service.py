"""Elastic IPs: create from a VIP, attach to / detach from a VM NIC, enable/disable, delete, query.

The service keeps the desired state (which VIP maps onto which NIC) and hands the data path to the
backend of the NIC's L3 EIP provider (``backends.EipBackend``). Every change is: the database
first, then the backend; if the backend fails, the database is put back and the backend told to
undo, so a failed call leaves neither a row nor a rule behind.

An EIP follows its VM (migration, stop, start elsewhere, destroy) through its provider, which
watches VM events; this service is not involved once the attachment is recorded.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from bus.errors import RingstackError
from mgmt.core.access import forget_sharing, load_owned
from mgmt.core.cascade import CascadeRegistry, CascadeRule
from mgmt.core.db import Database, create_guard
from mgmt.core.events import EventPublisher
from mgmt.core.extensions import ExtensionRegistry
from mgmt.core.query import QueryTarget, Relation, run_query
from mgmt.core.quota import check_quota, count_owned
from mgmt.core.resources import update_name_description
from mgmt.core.service import Account, CallContext, Service, handler
from mgmt.services.eip.backends import EipBackend, EipTarget, backend_for
from mgmt.services.eip.errors import EipError
from schema.api.base import EmptyReply, QueryReply
from schema.api.eip import (
    AttachEip,
    ChangeEipState,
    CreateEip,
    DeleteEip,
    DetachEip,
    EipInventory,
    EipReply,
    QueryEip,
    UpdateEip,
)
from schema.db.eip import Eip
from schema.db.network import L3Network, L3NetworkServiceRef, NetworkServiceProvider
from schema.db.vm import VmInstance, VmNic
from schema.db.vrouter import Vip

log = logging.getLogger(__name__)

KIND = "eip"
EIP_QUOTA = "eip.num"
SERVICE_TYPE = "EIP"

count_owned(EIP_QUOTA, 20, "elastic IPs", Eip)

QUERY = QueryTarget.for_model(
    Eip,
    EipInventory,
    name=KIND,
    relations={
        "vip": Relation("vip", Eip.vip_uuid, Vip.uuid),
        "vmNic": Relation("vmNic", Eip.vm_nic_uuid, VmNic.uuid),
    },
)


def _fresh(session: Session, eip: Eip) -> EipInventory:
    """The inventory after a change of its NIC (``guest_ip`` is read from the NIC)."""
    session.flush()
    session.refresh(eip)
    return _inventory(eip)


def _children(session: Session, parent_kind: str, uuids: Sequence[str]) -> list[str]:
    return list(session.scalars(select(Eip.uuid).where(Eip.vip_uuid.in_(uuids))))


def _delete(session: Session, uuids: Sequence[str]) -> None:
    forget_sharing(session, uuids)
    session.execute(delete(Eip).where(Eip.uuid.in_(uuids)))


# A VIP deleted with its L3 (Enforcing) takes its EIP along; the provider hears ``eip...deleted``.
RULE = CascadeRule(kind=KIND, parents=("vip",), children_of=_children, delete=_delete)


def _inventory(row: Eip) -> EipInventory:
    return EipInventory.model_validate(row, from_attributes=True)


def provider_type_of(session: Session, l3_uuid: str) -> str | None:
    """The type of the provider giving ``l3_uuid`` its EIP service (None: no provider does)."""
    return session.scalar(
        select(NetworkServiceProvider.type)
        .join(L3NetworkServiceRef, L3NetworkServiceRef.provider_uuid == NetworkServiceProvider.uuid)
        .where(
            L3NetworkServiceRef.l3_network_uuid == l3_uuid, L3NetworkServiceRef.service_type == SERVICE_TYPE
        )
    )


def target_of(session: Session, eip: Eip, nic_uuid: str) -> EipTarget:
    nic = session.get(VmNic, nic_uuid)
    vip = session.get(Vip, eip.vip_uuid)
    assert nic is not None and vip is not None and nic.ip is not None
    vm = session.get(VmInstance, nic.vm_instance_uuid)
    provider = provider_type_of(session, nic.l3_network_uuid)
    if provider is None:
        raise RingstackError(
            EipError.NO_PROVIDER,
            f"no network service provider gives L3 network {nic.l3_network_uuid} its EIP service",
            details={"l3NetworkUuid": nic.l3_network_uuid},
        )
    return EipTarget(
        eip_uuid=eip.uuid,
        vip_uuid=vip.uuid,
        vip_ip=vip.ip,
        vip_l3_uuid=vip.l3_network_uuid,
        nic_uuid=nic.uuid,
        nic_mac=nic.mac,
        guest_ip=nic.ip,
        nic_l3_uuid=nic.l3_network_uuid,
        vm_uuid=nic.vm_instance_uuid,
        host_uuid=vm.host_uuid if vm is not None else None,
        provider_type=provider,
    )


def check_nic(session: Session, eip: Eip, nic_uuid: str, account: Account) -> VmNic:
    nic = load_owned(session, VmNic, nic_uuid, account, "vm_nic")
    if nic.ip is None:
        raise RingstackError(
            EipError.INVALID_NIC, f"VM NIC {nic.uuid} has no IP address", details={"vmNicUuid": nic.uuid}
        )
    other = session.scalar(select(Eip.uuid).where(Eip.vm_nic_uuid == nic.uuid, Eip.uuid != eip.uuid))
    if other is not None:
        raise RingstackError(
            EipError.NIC_HAS_EIP, f"VM NIC {nic.uuid} already has EIP {other}", details={"eipUuid": other}
        )
    vip = session.get(Vip, eip.vip_uuid)
    nic_l3 = session.get(L3Network, nic.l3_network_uuid)
    vip_l3 = session.get(L3Network, vip.l3_network_uuid) if vip is not None else None
    assert vip is not None and nic_l3 is not None and vip_l3 is not None
    if nic_l3.uuid == vip_l3.uuid:
        raise RingstackError(
            EipError.INVALID_NIC,
            f"VM NIC {nic.uuid} is on the VIP's own L3 network {vip_l3.uuid}",
            details={"vmNicUuid": nic.uuid},
        )
    if nic_l3.zone_uuid != vip_l3.zone_uuid:
        raise RingstackError(
            EipError.INVALID_NIC,
            f"VM NIC {nic.uuid} is in zone {nic_l3.zone_uuid}, the VIP in {vip_l3.zone_uuid}",
            details={"vmNicUuid": nic.uuid},
        )
    return nic


class EipService(Service):
    name = "eip"

    db: Database
    events: EventPublisher
    extensions: ExtensionRegistry
    cascade: CascadeRegistry

    async def start(self) -> None:
        self.cascade.register(RULE)

    async def stop(self) -> None:
        self.cascade.unregister(KIND)

    def _backend(self, target: EipTarget) -> EipBackend:
        backend = backend_for(self.extensions, target.provider_type)
        if backend is None:
            raise RingstackError(
                EipError.NO_PROVIDER,
                f"the {target.provider_type} provider of L3 network {target.nic_l3_uuid} realises no EIPs "
                "(its plugin is not running)",
                details={"l3NetworkUuid": target.nic_l3_uuid, "providerType": target.provider_type},
            )
        return backend

    async def _backend_step(
        self,
        target: EipTarget,
        forward: Callable[[EipBackend], Callable[[EipTarget], Awaitable[None]]],
        back: Callable[[EipBackend], Callable[[EipTarget], Awaitable[None]]],
        restore: Callable[[Session], object],
    ) -> None:
        """``forward`` on the backend; if it fails: ``restore`` the database, ``back``, re-raise."""
        backend = self._backend(target)
        try:
            await forward(backend)(target)
        except BaseException:
            await self.db.run(restore)
            try:
                await back(backend)(target)
            except Exception as exc:  # the provider's next sync of that host/router finishes the undo
                log.warning("EIP %s: undoing a failed change failed too: %s", target.eip_uuid, exc)
            raise

    # ------------------------------------------------------------------ attach/detach core

    async def _attach(self, eip_uuid: str, nic_uuid: str, account: Account) -> EipInventory:
        def attach(session: Session) -> tuple[EipInventory, EipTarget | None]:
            eip = load_owned(session, Eip, eip_uuid, account, KIND)
            if eip.vm_nic_uuid not in (None, nic_uuid):
                raise RingstackError(
                    EipError.ALREADY_ATTACHED,
                    f"EIP {eip.uuid} is attached to VM NIC {eip.vm_nic_uuid}",
                    details={"vmNicUuid": eip.vm_nic_uuid},
                )
            nic = check_nic(session, eip, nic_uuid, account)
            target = target_of(session, eip, nic.uuid)
            self._backend(target)  # no provider, or its plugin not running: refused, nothing changed
            eip.vm_nic_uuid = nic.uuid
            return _fresh(session, eip), target if eip.state == "Enabled" else None

        def undo(session: Session) -> None:
            eip = session.get(Eip, eip_uuid)
            if eip is not None and eip.vm_nic_uuid == nic_uuid:
                eip.vm_nic_uuid = None

        inv, target = await self.db.run(attach)
        if target is not None:
            await self._backend_step(target, lambda b: b.apply, lambda b: b.remove, undo)
        return inv

    async def _detach(self, eip_uuid: str, account: Account) -> EipInventory | None:
        """None: no such EIP."""

        def detach(session: Session) -> tuple[EipInventory, EipTarget | None, str | None]:
            eip = load_owned(session, Eip, eip_uuid, account, KIND)
            nic_uuid = eip.vm_nic_uuid
            if nic_uuid is None:
                return _inventory(eip), None, None
            target = target_of(session, eip, nic_uuid) if eip.state == "Enabled" else None
            if target is not None:
                self._backend(target)
            eip.vm_nic_uuid = None
            return _fresh(session, eip), target, nic_uuid

        inv, target, nic_uuid = await self.db.run(detach)
        if target is not None:

            def undo(session: Session) -> None:
                eip = session.get(Eip, eip_uuid)
                nic = session.get(VmNic, nic_uuid)
                if eip is not None and nic is not None and eip.vm_nic_uuid is None:
                    eip.vm_nic_uuid = nic.uuid

            await self._backend_step(target, lambda b: b.remove, lambda b: b.apply, undo)
        return inv

    # ------------------------------------------------------------------ handlers

    @handler(CreateEip)
    async def create_eip(self, msg: CreateEip, ctx: CallContext) -> EipReply:
        uuid = ctx.new_resource_uuid(msg)

        def create(session: Session) -> tuple[EipInventory, bool]:
            existing = create_guard(session, Eip, uuid, ctx)
            if existing is not None:
                return _inventory(existing), False
            vip = load_owned(session, Vip, msg.vip_uuid, ctx.account, "vip")
            if vip.use_for is not None:
                raise RingstackError(
                    EipError.VIP_IN_USE,
                    f"VIP {vip.ip} ({vip.uuid}) is used by {vip.use_for}",
                    details={"useFor": vip.use_for},
                )
            check_quota(session, ctx.account, EIP_QUOTA, 1)
            vip.use_for = "Eip"
            row = Eip(
                uuid=uuid,
                name=msg.name,
                description=msg.description,
                vip_uuid=vip.uuid,
                vip_ip=vip.ip,
                state="Enabled",
                owner_account_uuid=ctx.account.uuid,
            )
            session.add(row)
            session.flush()
            return _inventory(row), True

        inv, new = await self.db.run(create)
        if msg.vm_nic_uuid is not None:
            try:
                inv = await self._attach(uuid, msg.vm_nic_uuid, ctx.account)
            except BaseException:
                if new:  # a create that fails leaves no EIP and a free VIP
                    await self.db.run(_drop, uuid)
                raise
        if new:
            await self.events.resource_event(KIND, uuid, "created", inv.to_wire())
        return EipReply(inventory=inv)

    @handler(AttachEip)
    async def attach_eip(self, msg: AttachEip, ctx: CallContext) -> EipReply:
        inv = await self._attach(msg.eip_uuid, msg.vm_nic_uuid, ctx.account)
        await self.events.resource_event(KIND, inv.uuid, "attached", inv.to_wire())
        return EipReply(inventory=inv)

    @handler(DetachEip)
    async def detach_eip(self, msg: DetachEip, ctx: CallContext) -> EipReply:
        inv = await self._detach(msg.uuid, ctx.account)
        assert inv is not None
        await self.events.resource_event(KIND, inv.uuid, "detached", inv.to_wire())
        return EipReply(inventory=inv)

    @handler(ChangeEipState)
    async def change_state(self, msg: ChangeEipState, ctx: CallContext) -> EipReply:
        wanted = "Enabled" if msg.state_event == "enable" else "Disabled"
        before: dict[str, str] = {}

        def change(session: Session) -> tuple[EipInventory, EipTarget | None]:
            eip = load_owned(session, Eip, msg.uuid, ctx.account, KIND)
            before["state"] = eip.state
            eip.state = wanted
            session.flush()
            target = target_of(session, eip, eip.vm_nic_uuid) if eip.vm_nic_uuid is not None else None
            if target is not None and before["state"] != wanted:
                self._backend(target)
            return _inventory(eip), target

        def undo(session: Session) -> None:
            eip = session.get(Eip, msg.uuid)
            if eip is not None:
                eip.state = before["state"]

        inv, target = await self.db.run(change)
        if target is not None and before["state"] != wanted:
            if wanted == "Enabled":
                await self._backend_step(target, lambda b: b.apply, lambda b: b.remove, undo)
            else:
                await self._backend_step(target, lambda b: b.remove, lambda b: b.apply, undo)
        await self.events.resource_event(KIND, inv.uuid, "updated", inv.to_wire())
        return EipReply(inventory=inv)

    @handler(UpdateEip)
    async def update_eip(self, msg: UpdateEip, ctx: CallContext) -> EipReply:
        inv = await update_name_description(
            self.db, self.events, Eip, KIND, msg.uuid, ctx.account, _inventory, msg.name, msg.description
        )
        return EipReply(inventory=inv)

    @handler(DeleteEip)
    async def delete_eip(self, msg: DeleteEip, ctx: CallContext) -> EmptyReply:
        try:
            await self._detach(msg.uuid, ctx.account)
        except RingstackError as exc:
            if exc.code == "SYS.NOT_FOUND":
                return EmptyReply()  # a retried delete succeeds
            raise
        if await self.db.run(_drop, msg.uuid):
            await self.events.resource_event(KIND, msg.uuid, "deleted")
        return EmptyReply()

    @handler(QueryEip, serial=False)
    async def query_eip(self, msg: QueryEip, ctx: CallContext) -> QueryReply:
        return await self.db.run(run_query, QUERY, msg, ctx.account)


def _drop(session: Session, uuid: str) -> bool:
    """Delete the EIP row and free its VIP (True: it existed)."""
    eip = session.get(Eip, uuid)
    if eip is None:
        return False
    vip = session.get(Vip, eip.vip_uuid)
    if vip is not None and vip.use_for == "Eip":
        vip.use_for = None
    forget_sharing(session, [uuid])
    session.delete(eip)
    return True
