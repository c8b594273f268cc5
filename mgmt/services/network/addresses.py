"""IP ranges and IPAM APIs: add (explicit or by CIDR), delete, query ranges; check, list and count
free addresses; the internal allocate/release messages.

Range changes of one broadcast domain (one L2) are serialised with a row lock on the L2, taken
before the overlap checks, so two nodes adding ranges to L3s on the same L2 at once cannot both
pass the check. Allocation itself needs no lock (see ``mgmt.services.network.ipam``).
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from bus.errors import RingstackError, Sys, not_found
from mgmt.core import ipam as addr
from mgmt.core.access import load_for_delete, load_owned, load_visible, visible
from mgmt.core.cascade import CascadeRegistry, announce_deleted
from mgmt.core.db import Database, create_guard
from mgmt.core.events import EventPublisher
from mgmt.core.query import QueryTarget, Relation, run_query
from mgmt.core.service import Account, CallContext, Service, handler
from mgmt.services.network import errors, ipam
from mgmt.services.network.common import (
    L3_KIND,
    RANGE_KIND,
    RANGE_RULE,
    USED_IP_KIND,
    USED_IP_RULE,
    delete_ranges,
    lock_l2s,
    range_inventory,
    reloaded,
)
from schema.api.base import EmptyReply, QueryReply
from schema.api.network import IpRangeInventory
from schema.api.network_ipam import (
    AddIpRange,
    AddIpRangeByNetworkCidr,
    CheckIpAvailability,
    CheckIpAvailabilityReply,
    DeleteIpRange,
    FreeIpInventory,
    GetFreeIp,
    GetFreeIpReply,
    GetIpAddressCapacity,
    InternalAllocateIp,
    InternalReleaseIp,
    IpCapacityReply,
    IpRangeReply,
    QueryIpRange,
    ReleaseIpReply,
    UsedIpInventory,
    UsedIpReply,
)
from schema.db.network import IpRange, L2Network, L3Network, UsedIp

RANGE_QUERY = QueryTarget.for_model(
    IpRange,
    IpRangeInventory,
    name="ipRange",
    relations={"l3Network": Relation("l3Network", IpRange.l3_network_uuid, L3Network.uuid)},
)


def load_range(session: Session, uuid: str, account: Account, *, write: bool) -> IpRange:
    """The range, if ``account`` may see (``write``: change) its L3 network; else NOT_FOUND /
    PERMISSION_DENIED, naming the range rather than its L3."""
    row = session.get(IpRange, uuid)
    if row is None:
        raise not_found(RANGE_KIND, uuid)
    loader = load_owned if write else load_visible
    try:
        loader(session, L3Network, row.l3_network_uuid, account, L3_KIND)
    except RingstackError as exc:
        if exc.code == Sys.NOT_FOUND:
            raise not_found(RANGE_KIND, uuid) from None
        raise
    return row


def _range_label(row: IpRange, account: Account) -> str:
    """Another account's range is described without its uuid, which it may not see."""
    if account.is_admin or row.owner_account_uuid == account.uuid:
        return f"IP range {row.uuid} ({row.start_ip}-{row.end_ip}) of L3 network {row.l3_network_uuid}"
    return f"an IP range ({row.start_ip}-{row.end_ip}) of another L3 network on the same L2 network"


def _check_fits(session: Session, l3: L3Network, spec: addr.RangeSpec, account: Account) -> None:
    """No overlap with any range on the same L2 (one broadcast domain); one CIDR and one gateway
    per L3 (a NIC gets its gateway and netmask from the L3)."""
    rows = session.scalars(
        select(IpRange)
        .join(L3Network, IpRange.l3_network_uuid == L3Network.uuid)
        .where(L3Network.l2_network_uuid == l3.l2_network_uuid)
        .order_by(IpRange.start_int)
    ).all()
    span = f"{addr.to_str(spec.start)}-{addr.to_str(spec.end)}"
    for row in rows:
        if spec.overlaps(row.start_int, row.end_int):
            raise RingstackError(
                errors.IP_RANGE_OVERLAP,
                f"the range {span} overlaps {_range_label(row, account)}",
                details={"startIp": row.start_ip, "endIp": row.end_ip},
            )
    cidr, gateway = spec.subnet.cidr, addr.to_str(spec.gateway)
    for row in rows:
        if row.l3_network_uuid != l3.uuid:
            continue
        if row.network_cidr != cidr:
            raise RingstackError(
                errors.IP_RANGE_CIDR_MISMATCH,
                f"L3 network {l3.uuid} is on {row.network_cidr}; the range {span} is in {cidr}",
                details={"networkCidr": row.network_cidr},
            )
        if row.gateway != gateway:
            raise RingstackError(
                errors.IP_RANGE_GATEWAY_MISMATCH,
                f"L3 network {l3.uuid} has gateway {row.gateway}, not {gateway}",
                details={"gateway": row.gateway},
            )


def _check_ranges_of(session: Session, l3_uuid: str, range_uuids: Sequence[str]) -> None:
    found = set(
        session.scalars(
            select(IpRange.uuid).where(IpRange.uuid.in_(range_uuids), IpRange.l3_network_uuid == l3_uuid)
        )
    )
    for uuid in range_uuids:
        if uuid not in found:
            raise not_found(RANGE_KIND, uuid)


class IpamService(Service):
    name = "ipam"

    db: Database
    events: EventPublisher
    cascade: CascadeRegistry

    async def start(self) -> None:
        self.cascade.register(RANGE_RULE)
        self.cascade.register(USED_IP_RULE)

    async def stop(self) -> None:
        self.cascade.unregister(RANGE_KIND)
        self.cascade.unregister(USED_IP_KIND)

    # ------------------------------------------------------------ ranges

    @handler(AddIpRange)
    async def add_range(self, msg: AddIpRange, ctx: CallContext) -> IpRangeReply:
        return await self._add(msg, ctx, msg.spec())

    @handler(AddIpRangeByNetworkCidr)
    async def add_range_by_cidr(self, msg: AddIpRangeByNetworkCidr, ctx: CallContext) -> IpRangeReply:
        return await self._add(msg, ctx, msg.spec())

    async def _add(
        self, msg: AddIpRange | AddIpRangeByNetworkCidr, ctx: CallContext, spec: addr.RangeSpec
    ) -> IpRangeReply:
        uuid = ctx.new_resource_uuid(msg)

        def add(session: Session) -> IpRangeInventory:
            existing = create_guard(session, IpRange, uuid, ctx)
            if existing is not None:
                return range_inventory(existing)
            l3 = load_owned(session, L3Network, msg.l3_network_uuid, ctx.account, L3_KIND)
            # Serialise range changes on this broadcast domain (see the module docstring).
            lock_l2s(session, L2Network.uuid == l3.l2_network_uuid)
            _check_fits(session, l3, spec, ctx.account)
            subnet = spec.subnet
            row = IpRange(
                uuid=uuid,
                name=msg.name,
                description=msg.description,
                l3_network_uuid=l3.uuid,
                start_ip=addr.to_str(spec.start),
                end_ip=addr.to_str(spec.end),
                netmask=subnet.netmask,
                gateway=addr.to_str(spec.gateway),
                network_cidr=subnet.cidr,
                prefix_len=subnet.prefix,
                ip_version=4,
                start_int=spec.start,
                end_int=spec.end,
                # the range is part of its L3 network: it belongs to the L3's owner
                owner_account_uuid=l3.owner_account_uuid,
            )
            session.add(row)
            return range_inventory(reloaded(session, row))

        inv = await self.db.run(add)
        await self.events.resource_event(RANGE_KIND, inv.uuid, "created", inv.to_wire())
        return IpRangeReply(inventory=inv)

    @handler(DeleteIpRange)
    async def delete_range(self, msg: DeleteIpRange, ctx: CallContext) -> EmptyReply:
        """Deleting a range that is already gone succeeds, so a retried delete is safe."""

        def delete_(session: Session) -> dict[str, list[str]] | None:
            row = session.get(IpRange, msg.uuid)
            # A range whose L3 the caller cannot see is gone to it, as one that does not exist.
            if (
                row is None
                or load_for_delete(session, L3Network, row.l3_network_uuid, ctx.account, L3_KIND) is None
            ):
                return None
            load_range(session, msg.uuid, ctx.account, write=True)
            cascaded = self.cascade.delete(session, RANGE_KIND, msg.uuid, msg.delete_mode)
            delete_ranges(session, [msg.uuid])
            return cascaded

        cascaded = await self.db.run(delete_)
        if cascaded is not None:
            await announce_deleted(self.events, cascaded, RANGE_KIND, msg.uuid)
        return EmptyReply()

    @handler(QueryIpRange, serial=False)
    async def query_ranges(self, msg: QueryIpRange, ctx: CallContext) -> QueryReply:
        def query(session: Session) -> QueryReply:
            # Ranges are visible through their L3 network (owned, shared or public).
            base = select(IpRange).where(
                IpRange.l3_network_uuid.in_(visible(select(L3Network.uuid), L3Network, ctx.account))
            )
            return run_query(session, RANGE_QUERY, msg, ctx.account, base, filter_rows=False)

        return await self.db.run(query)

    # ------------------------------------------------------------ IPAM reads

    @handler(CheckIpAvailability, serial=False)
    async def check_ip(self, msg: CheckIpAvailability, ctx: CallContext) -> CheckIpAvailabilityReply:
        def check(session: Session) -> CheckIpAvailabilityReply:
            load_visible(session, L3Network, msg.l3_network_uuid, ctx.account, L3_KIND)
            available, reason = ipam.availability(session, msg.l3_network_uuid, msg.ip)
            return CheckIpAvailabilityReply(available=available, reason=reason)

        return await self.db.run(check)

    @handler(GetFreeIp, serial=False)
    async def free_ips(self, msg: GetFreeIp, ctx: CallContext) -> GetFreeIpReply:
        def free(session: Session) -> GetFreeIpReply:
            load_visible(session, L3Network, msg.l3_network_uuid, ctx.account, L3_KIND)
            if msg.ip_range_uuid is not None:
                _check_ranges_of(session, msg.l3_network_uuid, [msg.ip_range_uuid])
            found = ipam.free_ips(
                session, msg.l3_network_uuid, range_uuid=msg.ip_range_uuid, start=msg.start, limit=msg.limit
            )
            return GetFreeIpReply(
                inventories=[
                    FreeIpInventory(
                        ip=addr.to_str(ip),
                        gateway=addr.to_str(spec.gateway),
                        netmask=spec.subnet.netmask,
                        ip_range_uuid=spec.uuid,
                    )
                    for spec, ip in found
                ]
            )

        return await self.db.run(free)

    @handler(GetIpAddressCapacity, serial=False)
    async def capacity(self, msg: GetIpAddressCapacity, ctx: CallContext) -> IpCapacityReply:
        def count(session: Session) -> IpCapacityReply:
            load_visible(session, L3Network, msg.l3_network_uuid, ctx.account, L3_KIND)
            if msg.ip_range_uuids is not None:
                _check_ranges_of(session, msg.l3_network_uuid, msg.ip_range_uuids)
            total, available, used = ipam.capacity(session, msg.l3_network_uuid, msg.ip_range_uuids)
            return IpCapacityReply(
                total_capacity=total, available_capacity=available, used_ip_address_number=used
            )

        return await self.db.run(count)

    # ------------------------------------------------------------ internal allocation

    # Allocation publishes no event: an address is part of what uses it (a NIC), whose events
    # carry it.
    @handler(InternalAllocateIp)
    async def allocate(self, msg: InternalAllocateIp, ctx: CallContext) -> UsedIpReply:
        uuid = ctx.new_resource_uuid(msg)

        def allocate(session: Session) -> UsedIpInventory:
            existing = create_guard(session, UsedIp, uuid, ctx)
            if existing is None:
                load_visible(session, L3Network, msg.l3_network_uuid, ctx.account, L3_KIND)
                ipam.allocate_ip(
                    session,
                    msg.l3_network_uuid,
                    msg.owner_account_uuid or ctx.account.uuid,
                    static_ip=msg.static_ip,
                    for_uuid=msg.used_for_uuid,
                    strategy=msg.allocator_strategy,
                    uuid=uuid,
                    quota_account=ctx.account,
                )
                existing = session.get(UsedIp, uuid)
            return UsedIpInventory.model_validate(existing, from_attributes=True)

        return UsedIpReply(inventory=await self.db.run(allocate))

    @handler(InternalReleaseIp, serial=False)
    async def release(self, msg: InternalReleaseIp, ctx: CallContext) -> ReleaseIpReply:
        def release(session: Session) -> ReleaseIpReply:
            load_visible(session, L3Network, msg.l3_network_uuid, ctx.account, L3_KIND)
            return ReleaseIpReply(released=ipam.release_ip(session, msg.l3_network_uuid, msg.ip))

        return await self.db.run(release)
