"""Race-free capacity reservation for hosts (CPU, memory), primary and backup storage (bytes).

Other services call these inside their own database transaction (``db.run``), so a reservation
commits or rolls back together with the change that needed it. Each one is a single conditional
UPDATE (``SET available = available - n WHERE available >= n``): PostgreSQL re-checks the WHERE
clause on the newest row version after waiting for a concurrent writer's row lock, so two
reservations can never both take the last bytes, whichever node they run on. No SELECT ... then
UPDATE, no application lock. The tables' CHECK constraints (available between 0 and total) back
this up.

A reservation that does not fit raises ``CAPACITY.*`` naming what was asked and what is left;
an unknown resource raises ``SYS.NOT_FOUND``. Releases never raise the available amount above
the total (a release that was already applied, say by a retried request, cannot create capacity).

The UPDATEs are Core statements on the tables, not ORM bulk updates: every VM create runs two,
and the ORM's session synchronisation cost the node more than the database took to run them.
A row of the same resource already loaded in the session is expired instead, so it reads the
new amounts when next used.
"""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import Table, func, select, text, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.util import identity_key

from bus.errors import RingstackError, not_found
from schema.db.host import Host
from schema.db.storage import BackupStorage, PrimaryStorage

_HOST = cast(Table, Host.__table__)


class Capacity:
    """Error codes of capacity reservations."""

    HOST_INSUFFICIENT = "CAPACITY.HOST_INSUFFICIENT"
    PRIMARY_STORAGE_INSUFFICIENT = "CAPACITY.PRIMARY_STORAGE_INSUFFICIENT"
    BACKUP_STORAGE_INSUFFICIENT = "CAPACITY.BACKUP_STORAGE_INSUFFICIENT"


def _check_amounts(**amounts: int) -> None:
    for name, value in amounts.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, not {value!r}")


def _expire(session: Session, model: Any, uuid: str) -> None:
    """A loaded row of the resource changed behind the ORM's back: make it read the new values."""
    if isinstance(session, Session):
        loaded = session.identity_map.get(identity_key(model, uuid))
        if loaded is not None:
            session.expire(loaded)


def _storage_reserve(session: Session, model: Any, kind: str, code: str, uuid: str, size: int) -> int:
    _check_amounts(size=size)
    table = model.__table__
    stmt = (
        update(table)
        .where(table.c.uuid == uuid, table.c.available_capacity >= size)
        .values(available_capacity=table.c.available_capacity - size)
        .returning(table.c.available_capacity)
    )
    left = session.execute(stmt).scalar_one_or_none()
    if left is not None:
        _expire(session, model, uuid)
        return int(left)
    available = session.scalar(select(model.available_capacity).where(model.uuid == uuid))
    if available is None:
        raise not_found(kind, uuid)
    raise RingstackError(
        code,
        f"{kind} {uuid} has {available} bytes available; {size} asked",
        details={"uuid": uuid, "requested": size, "available": int(available)},
    )


def _storage_release(session: Session, model: Any, kind: str, uuid: str, size: int) -> int:
    _check_amounts(size=size)
    table = model.__table__
    stmt = (
        update(table)
        .where(table.c.uuid == uuid)
        .values(
            available_capacity=func.least(table.c.total_capacity, table.c.available_capacity + size),
        )
        .returning(table.c.available_capacity)
    )
    left = session.execute(stmt).scalar_one_or_none()
    if left is None:
        raise not_found(kind, uuid)
    _expire(session, model, uuid)
    return int(left)


def reserve_primary_storage(session: Session, ps_uuid: str, size: int) -> int:
    """Take ``size`` bytes of the primary storage; returns what is left."""
    return _storage_reserve(
        session, PrimaryStorage, "primaryStorage", Capacity.PRIMARY_STORAGE_INSUFFICIENT, ps_uuid, size
    )


def release_primary_storage(session: Session, ps_uuid: str, size: int) -> int:
    """Give ``size`` bytes back; returns what is available now."""
    return _storage_release(session, PrimaryStorage, "primaryStorage", ps_uuid, size)


def reserve_backup_storage(session: Session, bs_uuid: str, size: int) -> int:
    return _storage_reserve(
        session, BackupStorage, "backupStorage", Capacity.BACKUP_STORAGE_INSUFFICIENT, bs_uuid, size
    )


def release_backup_storage(session: Session, bs_uuid: str, size: int) -> int:
    return _storage_release(session, BackupStorage, "backupStorage", bs_uuid, size)


def reserve_host(session: Session, host_uuid: str, cpu: int, memory: int) -> tuple[int, int]:
    """Take ``cpu`` cores and ``memory`` bytes of the host, both or neither; returns what is left."""
    _check_amounts(cpu=cpu, memory=memory)
    host = _HOST.c
    stmt = (
        update(_HOST)
        .where(host.uuid == host_uuid, host.available_cpu >= cpu, host.available_memory_size >= memory)
        .values(
            available_cpu=host.available_cpu - cpu,
            available_memory_size=host.available_memory_size - memory,
        )
        .returning(host.available_cpu, host.available_memory_size)
    )
    row = session.execute(stmt).one_or_none()
    if row is not None:
        _expire(session, Host, host_uuid)
        return int(row[0]), int(row[1])
    current = session.execute(
        select(Host.available_cpu, Host.available_memory_size).where(Host.uuid == host_uuid)
    ).one_or_none()
    if current is None:
        raise not_found("host", host_uuid)
    raise RingstackError(
        Capacity.HOST_INSUFFICIENT,
        f"host {host_uuid} has {current[0]} CPUs and {current[1]} bytes of memory available;"
        f" {cpu} CPUs and {memory} bytes asked",
        details={
            "uuid": host_uuid,
            "requestedCpu": cpu,
            "requestedMemory": memory,
            "availableCpu": int(current[0]),
            "availableMemory": int(current[1]),
        },
    )


_HOST_AND_STORAGE = text(
    """
    WITH h AS (
        UPDATE host SET available_cpu = available_cpu - :cpu,
                        available_memory_size = available_memory_size - :memory, updated_at = now()
        WHERE uuid = :host AND available_cpu >= :cpu AND available_memory_size >= :memory
        RETURNING uuid
    ), p AS (
        UPDATE primary_storage SET available_capacity = available_capacity - :size, updated_at = now()
        WHERE uuid = :storage AND available_capacity >= :size AND EXISTS (SELECT 1 FROM h)
        RETURNING uuid
    )
    SELECT EXISTS (SELECT 1 FROM h), EXISTS (SELECT 1 FROM p)
    """
)


def reserve_host_and_storage(
    session: Session, host_uuid: str, cpu: int, memory: int, ps_uuid: str, size: int
) -> bool:
    """``reserve_host`` and ``reserve_primary_storage`` together, both or neither, in one statement
    (a VM create's reservation: one round trip instead of two). False when either lacks room;
    nothing is then held. The host row is locked before the storage row, as ``release_*`` callers
    do, so concurrent reservations and releases cannot deadlock."""
    _check_amounts(cpu=cpu, memory=memory, size=size)
    params = {"host": host_uuid, "cpu": cpu, "memory": memory, "storage": ps_uuid, "size": size}
    host_taken, storage_taken = session.execute(_HOST_AND_STORAGE, params).one()
    if host_taken and not storage_taken:
        release_host(session, host_uuid, cpu, memory)
    if host_taken:
        _expire(session, Host, host_uuid)
    if storage_taken:
        _expire(session, PrimaryStorage, ps_uuid)
    return bool(host_taken and storage_taken)


def release_host(session: Session, host_uuid: str, cpu: int, memory: int) -> tuple[int, int]:
    _check_amounts(cpu=cpu, memory=memory)
    host = _HOST.c
    stmt = (
        update(_HOST)
        .where(host.uuid == host_uuid)
        .values(
            available_cpu=func.least(host.total_cpu, host.available_cpu + cpu),
            available_memory_size=func.least(host.total_memory_size, host.available_memory_size + memory),
        )
        .returning(host.available_cpu, host.available_memory_size)
    )
    row = session.execute(stmt).one_or_none()
    if row is None:
        raise not_found("host", host_uuid)
    _expire(session, Host, host_uuid)
    return int(row[0]), int(row[1])
