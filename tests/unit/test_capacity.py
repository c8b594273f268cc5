"""Capacity reservation without a database: each reservation is one conditional UPDATE (checked
on the SQL it sends), failures name what was asked and what is left, bad amounts are refused
before any SQL."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.dialects import postgresql

from bus.errors import RingstackError, Sys
from mgmt.core import capacity
from mgmt.core.capacity import Capacity

UUID = "a" * 32


class _Result:
    def __init__(self, value: Any) -> None:
        self.value = value

    def scalar_one_or_none(self) -> Any:
        return self.value

    def one_or_none(self) -> Any:
        return self.value


class FakeSession:
    """Records the statements; answers the UPDATE with ``updated`` and the follow-up SELECT with
    ``current`` (None: no such row)."""

    def __init__(self, updated: Any, current: Any = None) -> None:
        self.updated = updated
        self.current = current
        self.statements: list[str] = []

    def _sql(self, stmt: Any) -> str:
        sql = str(stmt.compile(dialect=postgresql.dialect()))
        self.statements.append(" ".join(sql.split()))
        return sql

    def execute(self, stmt: Any) -> _Result:
        sql = self._sql(stmt)
        return _Result(self.updated if sql.startswith("UPDATE") else self.current)

    def scalar(self, stmt: Any) -> Any:
        self._sql(stmt)
        return self.current


class Untouchable:
    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the session was used ({name}) for a refused amount")


def test_a_reservation_is_one_conditional_update():
    session = FakeSession(updated=70)
    assert capacity.reserve_primary_storage(session, UUID, 30) == 70
    [sql] = session.statements
    assert sql.startswith(
        "UPDATE primary_storage SET available_capacity=(primary_storage.available_capacity - "
    )
    assert "WHERE primary_storage.uuid = " in sql
    assert "AND primary_storage.available_capacity >= " in sql
    assert "RETURNING primary_storage.available_capacity" in sql


def test_a_host_reservation_takes_cpu_and_memory_together():
    session = FakeSession(updated=(3, 1024))
    assert capacity.reserve_host(session, UUID, 1, 512) == (3, 1024)
    [sql] = session.statements
    assert "host.available_cpu >= " in sql and "host.available_memory_size >= " in sql
    assert "available_cpu=(host.available_cpu - " in sql
    assert "available_memory_size=(host.available_memory_size - " in sql


def test_an_insufficient_reservation_says_what_is_left():
    session = FakeSession(updated=None, current=10)
    with pytest.raises(RingstackError) as err:
        capacity.reserve_backup_storage(session, UUID, 11)
    assert err.value.code == Capacity.BACKUP_STORAGE_INSUFFICIENT
    assert err.value.details == {"uuid": UUID, "requested": 11, "available": 10}
    assert "10 bytes available; 11 asked" in err.value.message

    session = FakeSession(updated=None, current=(2, 100))
    with pytest.raises(RingstackError) as err:
        capacity.reserve_host(session, UUID, 4, 50)
    assert err.value.code == Capacity.HOST_INSUFFICIENT
    assert (err.value.details["availableCpu"], err.value.details["availableMemory"]) == (2, 100)


def test_reserving_on_a_missing_resource_is_not_found():
    for call in (
        lambda s: capacity.reserve_primary_storage(s, UUID, 1),
        lambda s: capacity.reserve_host(s, UUID, 1, 1),
        lambda s: capacity.release_backup_storage(s, UUID, 1),
        lambda s: capacity.release_host(s, UUID, 1, 1),
    ):
        with pytest.raises(RingstackError) as err:
            call(FakeSession(updated=None, current=None))
        assert err.value.code == Sys.NOT_FOUND


def test_a_release_never_goes_above_the_total():
    session = FakeSession(updated=100)
    assert capacity.release_primary_storage(session, UUID, 5) == 100
    assert (
        "least(primary_storage.total_capacity, primary_storage.available_capacity + " in session.statements[0]
    )
    session = FakeSession(updated=(4, 4096))
    capacity.release_host(session, UUID, 1, 1)
    assert "least(host.total_cpu, host.available_cpu + " in session.statements[0]
    assert "least(host.total_memory_size, host.available_memory_size + " in session.statements[0]


@pytest.mark.parametrize("amount", [-1, 1.5, "3", True, None])
def test_bad_amounts_are_refused_before_any_sql(amount):
    for call in (
        lambda: capacity.reserve_primary_storage(Untouchable(), UUID, amount),
        lambda: capacity.release_primary_storage(Untouchable(), UUID, amount),
        lambda: capacity.reserve_backup_storage(Untouchable(), UUID, amount),
        lambda: capacity.reserve_host(Untouchable(), UUID, amount, 1),
        lambda: capacity.reserve_host(Untouchable(), UUID, 1, amount),
        lambda: capacity.release_host(Untouchable(), UUID, amount, 0),
    ):
        with pytest.raises(ValueError, match="non-negative integer"):
            call()


def test_zero_is_a_valid_amount():
    assert capacity.reserve_primary_storage(FakeSession(updated=5), UUID, 0) == 5
