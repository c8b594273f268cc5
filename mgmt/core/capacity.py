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
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from bus.errors import RingstackError, not_found
from schema.db.host import Host
from schema.db.storage import BackupStorage, PrimaryStorage


class Capacity:
    """Error codes of capacity reservations."""

    HOST_INSUFFICIENT = "CAPACITY.HOST_INSUFFICIENT"
    PRIMARY_STORAGE_INSUFFICIENT = "CAPACITY.PRIMARY_STORAGE_INSUFFICIENT"
    BACKUP_STORAGE_INSUFFICIENT = "CAPACITY.BACKUP_STORAGE_INSUFFICIENT"


def _check_amounts(**amounts: int) -> None:
    for name, value in amounts.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, not {value!r}")


def _storage_reserve(session: Session, model: Any, kind: str, code: str, uuid: str, size: int) -> int:
    _check_amounts(size=size)
    stmt = (
        update(model)
        .where(model.uuid == uuid, model.available_capacity >= size)
        .values(available_capacity=model.available_capacity - size)
        .returning(model.available_capacity)
        .execution_options(synchronize_session="fetch")
    )
    left = session.execute(stmt).scalar_one_or_none()
    if left is not None:
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
    stmt = (
        update(model)
        .where(model.uuid == uuid)
        .values(available_capacity=func.least(model.total_capacity, model.available_capacity + size))
        .returning(model.available_capacity)
        .execution_options(synchronize_session="fetch")
    )
    left = session.execute(stmt).scalar_one_or_none()
    if left is None:
        raise not_found(kind, uuid)
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
    stmt = (
        update(Host)
        .where(Host.uuid == host_uuid, Host.available_cpu >= cpu, Host.available_memory_size >= memory)
        .values(
            available_cpu=Host.available_cpu - cpu, available_memory_size=Host.available_memory_size - memory
        )
        .returning(Host.available_cpu, Host.available_memory_size)
        .execution_options(synchronize_session="fetch")
    )
    row = session.execute(stmt).one_or_none()
    if row is not None:
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


def release_host(session: Session, host_uuid: str, cpu: int, memory: int) -> tuple[int, int]:
    _check_amounts(cpu=cpu, memory=memory)
    stmt = (
        update(Host)
        .where(Host.uuid == host_uuid)
        .values(
            available_cpu=func.least(Host.total_cpu, Host.available_cpu + cpu),
            available_memory_size=func.least(Host.total_memory_size, Host.available_memory_size + memory),
        )
        .returning(Host.available_cpu, Host.available_memory_size)
        .execution_options(synchronize_session="fetch")
    )
    row = session.execute(stmt).one_or_none()
    if row is None:
        raise not_found("host", host_uuid)
    return int(row[0]), int(row[1])
