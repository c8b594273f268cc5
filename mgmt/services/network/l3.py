"""L3 networks: create, update, state, delete, query; their DNS servers and network services;
the network service provider catalogue.

Who may do what (see also ``schema.api.network``): an admin anything; a normal account may create
a Private, non-system L3 on an L2 it can see (shared with it) and then owns it; it may change only
L3s it owns (``load_owned``: a shared L3 is read-only) and never make one Public or system.
"""

from __future__ import annotations

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from bus.errors import RingstackError, Sys, invalid_argument, not_found
from mgmt.core.access import load_for_delete, load_owned, load_visible
from mgmt.core.cascade import CascadeRegistry, announce_deleted
from mgmt.core.db import Database, create_guard
from mgmt.core.events import EventPublisher
from mgmt.core.query import QueryTarget, Relation, run_query
from mgmt.core.service import Account, CallContext, Service, handler
from mgmt.services.network import errors
from mgmt.services.network.common import (
    L2_KIND,
    L3_KIND,
    L3_PAGE,
    L3_RULE,
    PROVIDER_PAGE,
    delete_l3s,
    l3_inventory,
    reloaded,
)
from schema.api.base import EmptyReply, QueryReply
from schema.api.network import (
    AddDnsToL3Network,
    ChangeL3NetworkState,
    CreateL3Network,
    DeleteL3Network,
    L3NetworkInventory,
    L3NetworkReply,
    QueryL3Network,
    RemoveDnsFromL3Network,
    UpdateL3Network,
    check_system_category,
)
from schema.api.network_service import (
    AttachNetworkServiceToL3Network,
    DetachNetworkServiceFromL3Network,
    NetworkServiceProviderInventory,
    QueryNetworkServiceProvider,
)
from schema.db.network import (
    IpRange,
    L2Network,
    L3Network,
    L3NetworkDns,
    L3NetworkServiceRef,
    NetworkServiceProvider,
)
from schema.db.vm import VmNic
from schema.db.zone import Zone

QUERY = QueryTarget.for_model(
    L3Network,
    L3NetworkInventory,
    name="l3Network",
    relations={
        "zone": Relation("zone", L3Network.zone_uuid, Zone.uuid),
        "l2Network": Relation("l2Network", L3Network.l2_network_uuid, L2Network.uuid),
        "ipRanges": Relation("ipRange", L3Network.uuid, IpRange.l3_network_uuid),
        "vmNic": Relation("vmNic", L3Network.uuid, VmNic.l3_network_uuid),
    },
)
PROVIDER_QUERY = QueryTarget.for_model(NetworkServiceProvider, NetworkServiceProviderInventory)


def _check_may_shape(account: Account, system: bool, category: str) -> None:
    """Normal accounts make private, non-system networks only; public/system ones are shared by admins."""
    if not account.is_admin and (system or category != "Private"):
        raise RingstackError(
            Sys.PERMISSION_DENIED,
            f"a normal account may only have Private, non-system L3 networks (asked system={system}, "
            f"category={category})",
        )


def _check_combination(system: bool, category: str) -> None:
    try:
        check_system_category(system, category)
    except ValueError as exc:
        raise invalid_argument(str(exc), field="category") from None


def _plan_attach(session: Session, l3_uuid: str, wanted: dict[str, list[str]]) -> list[L3NetworkServiceRef]:
    """The service rows to add; refuses unknown providers, unsupported types and conflicts."""
    current = {
        row.service_type: row.provider_uuid
        for row in session.scalars(
            select(L3NetworkServiceRef).where(L3NetworkServiceRef.l3_network_uuid == l3_uuid)
        )
    }
    planned: dict[str, str] = {}
    for provider_uuid, types in wanted.items():
        provider = session.get(NetworkServiceProvider, provider_uuid)
        if provider is None:
            raise not_found("network_service_provider", provider_uuid)
        unsupported = sorted(set(types) - set(provider.network_service_types))
        if unsupported:
            raise RingstackError(
                errors.NETWORK_SERVICE_UNSUPPORTED,
                f"provider {provider.name} does not give {', '.join(unsupported)}; "
                f"it gives {', '.join(provider.network_service_types)}",
                details={"providerUuid": provider_uuid, "unsupported": unsupported},
            )
        for service_type in types:
            holder = current.get(service_type) or planned.get(service_type)
            if holder is not None and holder != provider_uuid:
                raise RingstackError(
                    errors.NETWORK_SERVICE_CONFLICT,
                    f"{service_type} on L3 network {l3_uuid} is given by provider {holder} already",
                    details={"networkServiceType": service_type, "providerUuid": holder},
                )
            if current.get(service_type) is None:
                planned[service_type] = provider_uuid
    return [
        L3NetworkServiceRef(l3_network_uuid=l3_uuid, service_type=t, provider_uuid=p)
        for t, p in sorted(planned.items())
    ]


class L3NetworkService(Service):
    name = "l3network"

    db: Database
    events: EventPublisher
    cascade: CascadeRegistry

    async def start(self) -> None:
        self.cascade.register(L3_RULE)

    async def stop(self) -> None:
        self.cascade.unregister(L3_KIND)

    async def _publish(self, action: str, inv: L3NetworkInventory) -> L3NetworkReply:
        await self.events.resource_event(L3_KIND, inv.uuid, action, inv.to_wire())
        return L3NetworkReply(inventory=inv)

    @handler(CreateL3Network)
    async def create(self, msg: CreateL3Network, ctx: CallContext) -> L3NetworkReply:
        uuid = ctx.new_resource_uuid(msg)

        def create(session: Session) -> L3NetworkInventory:
            existing = create_guard(session, L3Network, uuid, ctx)
            if existing is not None:
                return l3_inventory(existing)
            _check_may_shape(ctx.account, msg.system, msg.category)
            l2 = load_visible(session, L2Network, msg.l2_network_uuid, ctx.account, L2_KIND)
            row = L3Network(
                uuid=uuid,
                name=msg.name,
                description=msg.description,
                l2_network_uuid=l2.uuid,
                zone_uuid=l2.zone_uuid,
                type=msg.type,
                state="Enabled",
                category=msg.category,
                system=msg.system,
                dns_domain=msg.dns_domain,
                owner_account_uuid=ctx.account.uuid,
            )
            session.add(row)
            return l3_inventory(reloaded(session, row))

        return await self._publish("created", await self.db.run(create))

    @handler(UpdateL3Network)
    async def update(self, msg: UpdateL3Network, ctx: CallContext) -> L3NetworkReply:
        def update(session: Session) -> L3NetworkInventory:
            row = load_owned(session, L3Network, msg.uuid, ctx.account, L3_KIND)
            system = row.system if msg.system is None else msg.system
            category = row.category if msg.category is None else msg.category
            _check_combination(system, category)
            _check_may_shape(ctx.account, system, category)
            row.system, row.category = system, category
            if msg.name is not None:
                row.name = msg.name
            if msg.description is not None:
                row.description = msg.description
            if msg.dns_domain is not None:
                row.dns_domain = msg.dns_domain
            return l3_inventory(reloaded(session, row))

        return await self._publish("updated", await self.db.run(update))

    @handler(ChangeL3NetworkState)
    async def change_state(self, msg: ChangeL3NetworkState, ctx: CallContext) -> L3NetworkReply:
        new_state = "Enabled" if msg.state_event == "enable" else "Disabled"

        def change(session: Session) -> tuple[L3NetworkInventory, bool]:
            row = load_owned(session, L3Network, msg.uuid, ctx.account, L3_KIND)
            changed = row.state != new_state
            row.state = new_state
            return l3_inventory(reloaded(session, row)), changed

        inv, changed = await self.db.run(change)
        if changed:
            await self.events.resource_event(L3_KIND, inv.uuid, "state", inv.to_wire())
        return L3NetworkReply(inventory=inv)

    @handler(DeleteL3Network)
    async def delete(self, msg: DeleteL3Network, ctx: CallContext) -> EmptyReply:
        """Its ranges, DNS and services go with it. Permissive refuses while addresses are allocated
        on it (or VM NICs... use it). Deleting one already gone succeeds (a retry is safe)."""

        def delete_(session: Session) -> dict[str, list[str]] | None:
            if load_for_delete(session, L3Network, msg.uuid, ctx.account, L3_KIND) is None:
                return None
            cascaded = self.cascade.delete(session, L3_KIND, msg.uuid, msg.delete_mode)
            delete_l3s(session, [msg.uuid])
            return cascaded

        cascaded = await self.db.run(delete_)
        if cascaded is not None:
            await announce_deleted(self.events, cascaded, L3_KIND, msg.uuid)
        return EmptyReply()

    @handler(QueryL3Network, serial=False)
    async def query(self, msg: QueryL3Network, ctx: CallContext) -> QueryReply:
        return await self.db.run(run_query, QUERY, msg, ctx.account, L3_PAGE)

    # ------------------------------------------------------------ DNS

    @handler(AddDnsToL3Network)
    async def add_dns(self, msg: AddDnsToL3Network, ctx: CallContext) -> L3NetworkReply:
        def add(session: Session) -> tuple[L3NetworkInventory, bool]:
            row = load_owned(session, L3Network, msg.l3_network_uuid, ctx.account, L3_KIND)
            if msg.dns in row.dns:
                if ctx.resumed:  # our own earlier run added it before its node died
                    return l3_inventory(row), False
                raise RingstackError(
                    errors.DNS_DUPLICATE,
                    f"L3 network {row.uuid} already has DNS server {msg.dns}",
                    details={"dns": msg.dns},
                )
            last = session.scalar(
                select(func.max(L3NetworkDns.position)).where(L3NetworkDns.l3_network_uuid == row.uuid)
            )
            session.add(L3NetworkDns(l3_network_uuid=row.uuid, dns=msg.dns, position=(last or 0) + 1))
            return l3_inventory(reloaded(session, row)), True

        inv, added = await self.db.run(add)
        if added:
            await self.events.resource_event(L3_KIND, inv.uuid, "dns_added", inv.to_wire())
        return L3NetworkReply(inventory=inv)

    @handler(RemoveDnsFromL3Network)
    async def remove_dns(self, msg: RemoveDnsFromL3Network, ctx: CallContext) -> L3NetworkReply:
        def remove(session: Session) -> tuple[L3NetworkInventory, bool]:
            row = load_owned(session, L3Network, msg.l3_network_uuid, ctx.account, L3_KIND)
            gone = session.execute(
                delete(L3NetworkDns)
                .where(L3NetworkDns.l3_network_uuid == row.uuid, L3NetworkDns.dns == msg.dns)
                .returning(L3NetworkDns.dns)
            ).first()
            return l3_inventory(reloaded(session, row)), gone is not None

        inv, changed = await self.db.run(remove)
        if changed:
            await self.events.resource_event(L3_KIND, inv.uuid, "dns_removed", inv.to_wire())
        return L3NetworkReply(inventory=inv)

    # ------------------------------------------------------------ network services

    @handler(AttachNetworkServiceToL3Network)
    async def attach_services(self, msg: AttachNetworkServiceToL3Network, ctx: CallContext) -> L3NetworkReply:
        def attach(session: Session) -> tuple[L3NetworkInventory, bool]:
            row = load_owned(session, L3Network, msg.l3_network_uuid, ctx.account, L3_KIND)
            added = _plan_attach(session, row.uuid, msg.network_services)
            session.add_all(added)
            return l3_inventory(reloaded(session, row)), bool(added)

        inv, changed = await self.db.run(attach)
        if changed:
            await self.events.resource_event(L3_KIND, inv.uuid, "services_attached", inv.to_wire())
        return L3NetworkReply(inventory=inv)

    @handler(DetachNetworkServiceFromL3Network)
    async def detach_services(
        self, msg: DetachNetworkServiceFromL3Network, ctx: CallContext
    ) -> L3NetworkReply:
        def detach(session: Session) -> tuple[L3NetworkInventory, bool]:
            row = load_owned(session, L3Network, msg.l3_network_uuid, ctx.account, L3_KIND)
            removed = 0
            for provider_uuid, types in msg.network_services.items():
                if session.get(NetworkServiceProvider, provider_uuid) is None:
                    raise not_found("network_service_provider", provider_uuid)
                gone = session.execute(
                    delete(L3NetworkServiceRef)
                    .where(
                        L3NetworkServiceRef.l3_network_uuid == row.uuid,
                        L3NetworkServiceRef.provider_uuid == provider_uuid,
                        L3NetworkServiceRef.service_type.in_(types),
                    )
                    .returning(L3NetworkServiceRef.service_type)
                ).all()
                removed += len(gone)
            return l3_inventory(reloaded(session, row)), removed > 0

        inv, changed = await self.db.run(detach)
        if changed:
            await self.events.resource_event(L3_KIND, inv.uuid, "services_detached", inv.to_wire())
        return L3NetworkReply(inventory=inv)

    @handler(QueryNetworkServiceProvider, serial=False)
    async def query_providers(self, msg: QueryNetworkServiceProvider, ctx: CallContext) -> QueryReply:
        # The catalogue is the system's, readable by every account: its rows are not filtered, the
        # relations a condition reaches through (an L3 network) are.
        def query(session: Session) -> QueryReply:
            return run_query(session, PROVIDER_QUERY, msg, ctx.account, PROVIDER_PAGE, filter_rows=False)

        return await self.db.run(query)
