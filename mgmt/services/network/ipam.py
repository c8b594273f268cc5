"""IP address management of L3 networks: the ``ipam`` service's API (IP ranges: add, explicit or
by CIDR, delete, query; check, list and count free addresses; the internal allocate/release
messages) and the allocation other services call in their own transaction:

    from mgmt.services.network.ipam import allocate_ip, release_ip

    ip, gateway, netmask, range_uuid = allocate_ip(session, l3_uuid, ctx.account.uuid,
                                                   for_uuid=nic_uuid, quota_account=ctx.account)
    ...
    release_ip(session, l3_uuid, ip)

The address arithmetic, range rules and allocation strategies are pure (``schema.ipv4``).

Why no address is ever handed out twice, across transactions and management nodes: an
allocation is a row of ``used_ip`` and (l3_network_uuid, ip) is UNIQUE. A strategy picks a
candidate from what this transaction can see; the INSERT runs in a savepoint; if another
transaction took the address first, PostgreSQL reports a unique violation, the savepoint is rolled
back (the caller's transaction survives) and the next attempt skips that address and re-reads
what is used. Collisions are bounded (``MAX_ATTEMPTS``).

So that concurrent transactions do not all queue on the same uncommitted address (first-available
makes them all want the lowest one), a candidate is first claimed with a transaction-scoped
advisory lock taken without waiting: a candidate claimed by another transaction is skipped. The
lock only spreads the work; the constraint alone guarantees uniqueness.

Range changes of one broadcast domain (one L2) are serialised with a row lock on the L2, taken
before the overlap checks, so two nodes adding ranges to L3s on the same L2 at once cannot both
pass the check. Allocation itself needs no lock.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from psycopg2 import errorcodes
from sqlalchemy import Select, delete, func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from bus.envelope import new_uuid
from bus.errors import RingstackError, Sys, invalid_argument, not_found
from mgmt.core.access import load_for_delete, load_owned, load_visible, visible
from mgmt.core.cascade import CascadeRegistry, announce_deleted
from mgmt.core.db import Database, create_guard
from mgmt.core.events import EventPublisher
from mgmt.core.query import QueryTarget, Relation, run_query
from mgmt.core.quota import check_quota, register_usage
from mgmt.core.service import Account, CallContext, Service, handler
from mgmt.services.network import errors
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
from schema import ipv4
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

IP_QUOTA = "l3.ipNum"
# Collisions (an address committed by another transaction after we read) before giving up.
MAX_ATTEMPTS = 64

RANGE_QUERY = QueryTarget.for_model(
    IpRange,
    IpRangeInventory,
    name="ipRange",
    relations={"l3Network": Relation("l3Network", IpRange.l3_network_uuid, L3Network.uuid)},
)


# ---------------------------------------------------------------------- allocation, in the caller's transaction


class Allocation(NamedTuple):
    ip: str
    gateway: str
    netmask: str
    ip_range_uuid: str


def range_specs(
    session: Session, l3_uuid: str, range_uuids: Sequence[str] | None = None
) -> list[ipv4.RangeSpec]:
    """The L3's ranges (or the listed ones among them), lowest first."""
    stmt = select(
        IpRange.uuid, IpRange.start_int, IpRange.end_int, IpRange.gateway, IpRange.prefix_len
    ).where(IpRange.l3_network_uuid == l3_uuid)
    if range_uuids is not None:
        stmt = stmt.where(IpRange.uuid.in_(range_uuids))
    return [
        ipv4.RangeSpec(start=start, end=end, gateway=ipv4.to_int(gateway), prefix=prefix, uuid=uuid)
        for uuid, start, end, gateway, prefix in session.execute(stmt.order_by(IpRange.start_int))
    ]


def used_addresses(session: Session, l3_uuid: str) -> set[int]:
    return set(session.scalars(select(UsedIp.ip_int).where(UsedIp.l3_network_uuid == l3_uuid)))


def _parse(ip: str) -> int:
    try:
        return ipv4.to_int(ip)
    except ValueError as exc:
        raise invalid_argument(str(exc), ip=ip) from None


def _not_in_range(l3_uuid: str, ip: str) -> RingstackError:
    return RingstackError(
        errors.IP_NOT_IN_RANGE,
        f"{ip} is not an address any IP range of L3 network {l3_uuid} can hand out",
        details={"l3NetworkUuid": l3_uuid, "ip": ip},
    )


def _static_candidate(ranges: Sequence[ipv4.RangeSpec], l3_uuid: str, ip: str) -> tuple[ipv4.RangeSpec, int]:
    value = _parse(ip)
    spec = ipv4.locate(ranges, value)
    if spec is None or not spec.allocatable(value):
        raise _not_in_range(l3_uuid, ip)
    return spec, value


def _ip_in_use(l3_uuid: str, ip: str) -> RingstackError:
    return RingstackError(
        errors.IP_IN_USE,
        f"{ip} is already allocated on L3 network {l3_uuid}",
        details={"l3NetworkUuid": l3_uuid, "ip": ip},
    )


def _insert(session: Session, values: dict[str, object]) -> bool:
    """INSERT in a savepoint; False when the address was taken meanwhile (or its range deleted)."""
    try:
        with session.begin_nested():
            session.execute(insert(UsedIp).values(**values))
    except IntegrityError as exc:
        code = getattr(exc.orig, "pgcode", None)
        diag = getattr(exc.orig, "diag", None)
        constraint = getattr(diag, "constraint_name", None)
        if code == errorcodes.UNIQUE_VIOLATION and constraint == "uq_used_ip_l3_network_uuid_ip":
            return False
        if code == errorcodes.FOREIGN_KEY_VIOLATION:
            return False  # the range went away; the next attempt re-reads the ranges
        raise
    return True


def allocate_ip(
    session: Session,
    l3_uuid: str,
    owner_account_uuid: str | None,
    *,
    static_ip: str | None = None,
    for_uuid: str | None = None,
    strategy: str | None = None,
    uuid: str | None = None,
    quota_account: Account | None = None,
) -> Allocation:
    """Allocate one address on ``l3_uuid`` in the caller's transaction.

    ``static_ip``: exactly that address (``L3.IP_IN_USE`` / ``L3.IP_NOT_IN_RANGE``). ``strategy``:
    an allocator name (``mgmt.core.ipv4.strategy_names()``; random by default). ``for_uuid``:
    what uses it (a NIC). ``uuid``: the ``used_ip`` row's uuid. ``quota_account``: the account
    whose ``l3.ipNum`` quota to check (admins have none; None skips the check, for system
    allocations such as a virtual router's). Errors: ``SYS.NOT_FOUND``, ``L3.NETWORK_DISABLED``,
    ``L3.NO_IP_RANGE``, ``L3.IP_EXHAUSTED`` (naming the L3), ``L3.IP_ALLOCATION_CONTENDED``.
    """
    l3 = session.get(L3Network, l3_uuid)
    if l3 is None:
        raise not_found("l3_network", l3_uuid)
    if l3.state != "Enabled":
        raise RingstackError(
            errors.NETWORK_DISABLED,
            f"L3 network {l3.name} ({l3_uuid}) is disabled",
            details={"uuid": l3_uuid},
        )
    try:
        chooser = ipv4.get_strategy(strategy)
    except ValueError as exc:
        raise invalid_argument(str(exc), allocatorStrategy=strategy) from None
    if quota_account is not None:
        check_quota(session, quota_account, IP_QUOTA, 1)
    row_uuid = uuid or new_uuid()
    ranges = _ranges(session, l3)
    # The random strategy first probes a few random candidates against the table (one indexed
    # query) instead of loading every used address: that load made each allocation O(addresses in
    # use), and a batch of VM creates quadratic. A nearly full network falls back to the full scan.
    probing = static_ip is None and isinstance(chooser, ipv4.RandomPick)
    used: set[int] = set() if probing else used_addresses(session, l3_uuid)
    skipped: set[int] = set()  # being allocated by another transaction right now, or just taken
    collisions = 0
    while True:
        if static_ip is not None:
            # No claim: waiting on a concurrent insert of this very address is the right answer.
            spec, value = _static_candidate(ranges, l3_uuid, static_ip)
        else:
            picked = _probe(session, l3_uuid, ranges, skipped, chooser) if probing else None  # type: ignore[arg-type]
            if picked is None and probing:
                probing = False
                used = used_addresses(session, l3_uuid)
            if picked is None:
                picked = chooser.pick(ranges, used | skipped)
            if picked is None:
                raise RingstackError(
                    errors.IP_EXHAUSTED,
                    f"L3 network {l3.name} ({l3_uuid}) has no free IP address",
                    details={"uuid": l3_uuid, "name": l3.name},
                )
            spec, value = picked
            if not _claim(session, l3_uuid, value):
                skipped.add(value)
                continue
        subnet = spec.subnet
        ip = ipv4.to_str(value)
        values: dict[str, object] = {
            "uuid": row_uuid,
            "l3_network_uuid": l3_uuid,
            "ip_range_uuid": spec.uuid,
            "ip": ip,
            "ip_int": value,
            "gateway": ipv4.to_str(spec.gateway),
            "netmask": subnet.netmask,
            "owner_account_uuid": owner_account_uuid,
            "used_for_uuid": for_uuid,
        }
        if _insert(session, values):
            return Allocation(ip, ipv4.to_str(spec.gateway), subnet.netmask, spec.uuid)
        if static_ip is not None and session.scalar(_used_row(l3_uuid, ip)) is not None:
            raise _ip_in_use(l3_uuid, ip)
        collisions += 1
        if collisions >= MAX_ATTEMPTS:
            raise RingstackError(
                errors.IP_ALLOCATION_CONTENDED,
                f"could not allocate an address on L3 network {l3_uuid} after {collisions} collisions; retry",
                details={"uuid": l3_uuid},
            )
        # Someone committed it since we read (or its range went): read again.
        skipped.add(value)
        ranges = _ranges(session, l3)
        if not probing:
            used = used_addresses(session, l3_uuid)


PROBES = 16


def _probe(
    session: Session,
    l3_uuid: str,
    ranges: Sequence[ipv4.RangeSpec],
    skipped: set[int],
    chooser: ipv4.RandomPick,
) -> tuple[ipv4.RangeSpec, int] | None:
    """A random free address found by checking a few random candidates in one query, or None."""
    sizes = [max(0, spec.hi - spec.lo + 1) for spec in ranges]
    if not ranges or sum(sizes) == 0:
        return None
    candidates: dict[int, ipv4.RangeSpec] = {}
    for _ in range(PROBES):
        spec = chooser.rng.choices(list(ranges), weights=sizes)[0]
        ip = chooser.rng.randint(spec.lo, spec.hi)
        if spec.allocatable(ip) and ip not in skipped:
            candidates[ip] = spec
    if not candidates:
        return None
    taken = set(
        session.scalars(
            select(UsedIp.ip_int).where(
                UsedIp.l3_network_uuid == l3_uuid, UsedIp.ip_int.in_(list(candidates))
            )
        )
    )
    for ip, spec in candidates.items():
        if ip not in taken:
            return spec, ip
    return None


def _ranges(session: Session, l3: L3Network) -> list[ipv4.RangeSpec]:
    ranges = range_specs(session, l3.uuid)
    if not ranges:
        raise RingstackError(
            errors.NO_IP_RANGE,
            f"L3 network {l3.name} ({l3.uuid}) has no IP range",
            details={"uuid": l3.uuid},
        )
    return ranges


def _claim(session: Session, l3_uuid: str, value: int) -> bool:
    """Try (without waiting) to become the one transaction allocating ``value`` on the L3.

    Only an optimisation: without it, concurrent first-available allocations all INSERT the same
    lowest address and queue behind each other's uncommitted rows. The lock lasts until the
    transaction ends; a hash collision on the L3 key merely makes us skip an address.
    """
    signed = value - (1 << 32) if value >= 1 << 31 else value  # the key is a signed int4
    return bool(session.scalar(select(func.pg_try_advisory_xact_lock(func.hashtext(l3_uuid), signed))))


def _used_row(l3_uuid: str, ip: str) -> Select[str]:
    return select(UsedIp.uuid).where(UsedIp.l3_network_uuid == l3_uuid, UsedIp.ip == ip)


def release_ip(session: Session, l3_uuid: str, ip: str) -> bool:
    """Give ``ip`` back. False when it was not allocated (a retried release is harmless);
    ``L3.IP_NOT_IN_RANGE`` when no range of the L3 holds it (a caller's mistake)."""
    value = _parse(ip)
    ip = ipv4.to_str(value)
    deleted = session.execute(
        delete(UsedIp).where(UsedIp.l3_network_uuid == l3_uuid, UsedIp.ip == ip).returning(UsedIp.uuid)
    ).first()
    if deleted is not None:
        return True
    if (
        session.get(L3Network, l3_uuid) is not None
        and ipv4.locate(range_specs(session, l3_uuid), value) is None
    ):
        raise _not_in_range(l3_uuid, ip)
    return False


def release_ips_for(session: Session, for_uuid: str) -> list[tuple[str, str]]:
    """Release every address allocated for ``for_uuid`` (a NIC being deleted): (l3 uuid, ip) pairs."""
    rows = session.execute(
        delete(UsedIp).where(UsedIp.used_for_uuid == for_uuid).returning(UsedIp.l3_network_uuid, UsedIp.ip)
    )
    return [(l3, ip) for l3, ip in rows]


def availability(session: Session, l3_uuid: str, ip: str) -> tuple[bool, str | None]:
    """(available, reason) for one address, ZStack's CheckIpAvailability."""
    value = _parse(ip)
    ranges = range_specs(session, l3_uuid)
    if any(spec.gateway == value for spec in ranges):
        return False, "Gateway"
    spec = ipv4.locate(ranges, value)
    if spec is None:
        return False, "NotInRange"
    subnet = spec.subnet
    if value == subnet.network:
        return False, "NetworkAddress"
    if value == subnet.broadcast:
        return False, "BroadcastAddress"
    if session.scalar(_used_row(l3_uuid, ipv4.to_str(value))) is not None:
        return False, "Used"
    return True, None


def free_ips(
    session: Session, l3_uuid: str, *, range_uuid: str | None, start: str | None, limit: int
) -> list[tuple[ipv4.RangeSpec, int]]:
    ranges = range_specs(session, l3_uuid, None if range_uuid is None else [range_uuid])
    first = None if start is None else _parse(start)
    return ipv4.free_addresses(ranges, used_addresses(session, l3_uuid), first=first, limit=limit)


def capacity(session: Session, l3_uuid: str, range_uuids: Sequence[str] | None) -> tuple[int, int, int]:
    """(total, available, used) over the L3's ranges, or the listed ones among them."""
    ranges = range_specs(session, l3_uuid, range_uuids)
    used = used_addresses(session, l3_uuid)
    total = sum(spec.capacity() for spec in ranges)
    available = sum(ipv4.free_count(spec, used) for spec in ranges)
    used_count = session.scalar(
        select(func.count())
        .select_from(UsedIp)
        .where(UsedIp.ip_range_uuid.in_([spec.uuid for spec in ranges]))
    )
    return total, available, int(used_count or 0)


def _ip_usage(session: Session, account_uuid: str) -> int:
    stmt = select(func.count()).select_from(UsedIp).where(UsedIp.owner_account_uuid == account_uuid)
    return int(session.scalar(stmt) or 0)


register_usage(IP_QUOTA, _ip_usage)


# ---------------------------------------------------------------------- the API


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


def _check_fits(session: Session, l3: L3Network, spec: ipv4.RangeSpec, account: Account) -> None:
    """No overlap with any range on the same L2 (one broadcast domain); one CIDR and one gateway
    per L3 (a NIC gets its gateway and netmask from the L3)."""
    rows = session.scalars(
        select(IpRange)
        .join(L3Network, IpRange.l3_network_uuid == L3Network.uuid)
        .where(L3Network.l2_network_uuid == l3.l2_network_uuid)
        .order_by(IpRange.start_int)
    ).all()
    span = f"{ipv4.to_str(spec.start)}-{ipv4.to_str(spec.end)}"
    for row in rows:
        if spec.overlaps(row.start_int, row.end_int):
            raise RingstackError(
                errors.IP_RANGE_OVERLAP,
                f"the range {span} overlaps {_range_label(row, account)}",
                details={"startIp": row.start_ip, "endIp": row.end_ip},
            )
    cidr, gateway = spec.subnet.cidr, ipv4.to_str(spec.gateway)
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
        self, msg: AddIpRange | AddIpRangeByNetworkCidr, ctx: CallContext, spec: ipv4.RangeSpec
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
                start_ip=ipv4.to_str(spec.start),
                end_ip=ipv4.to_str(spec.end),
                netmask=subnet.netmask,
                gateway=ipv4.to_str(spec.gateway),
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
            available, reason = availability(session, msg.l3_network_uuid, msg.ip)
            return CheckIpAvailabilityReply(available=available, reason=reason)

        return await self.db.run(check)

    @handler(GetFreeIp, serial=False)
    async def free_ips(self, msg: GetFreeIp, ctx: CallContext) -> GetFreeIpReply:
        def free(session: Session) -> GetFreeIpReply:
            load_visible(session, L3Network, msg.l3_network_uuid, ctx.account, L3_KIND)
            if msg.ip_range_uuid is not None:
                _check_ranges_of(session, msg.l3_network_uuid, [msg.ip_range_uuid])
            found = free_ips(
                session, msg.l3_network_uuid, range_uuid=msg.ip_range_uuid, start=msg.start, limit=msg.limit
            )
            return GetFreeIpReply(
                inventories=[
                    FreeIpInventory(
                        ip=ipv4.to_str(ip),
                        gateway=ipv4.to_str(spec.gateway),
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
            total, available, used = capacity(session, msg.l3_network_uuid, msg.ip_range_uuids)
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
                allocate_ip(
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
            return ReleaseIpReply(released=release_ip(session, msg.l3_network_uuid, msg.ip))

        return await self.db.run(release)
