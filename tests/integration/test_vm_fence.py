"""The fence every job transaction (a VM create runs five) carries, on a real database.

The check rides on the transaction's first statement (``mgmt.core.db.arm_fence``) instead of a
round trip of its own; these tests show it is still the check of ``mgmt.cluster.ownership``'s
argument: a stale holder's transaction fails whatever it starts with and changes nothing, and a
takeover waits for a fenced transaction in flight.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from bus.errors import RingstackError, Sys
from mgmt.core.db import CURRENT_FENCE, Database, Fence
from schema.db.zone import Zone

NODE = "e" * 32
PARTITION = 5
TOKEN = 3


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url, pool_size=2)
    with database.session() as session, session.begin():
        session.execute(
            text("UPDATE ring_partition SET owner_node_uuid = :n, token = :t WHERE partition = :p"),
            {"n": NODE, "t": TOKEN, "p": PARTITION},
        )
        session.execute(text("CREATE TABLE fence_probe (id int PRIMARY KEY, note text)"))
    try:
        yield database
    finally:
        database.close()


async def fenced(db: Database, fn: Callable[..., Any], token: int = TOKEN) -> Any:
    reset = CURRENT_FENCE.set(Fence(NODE, PARTITION, token))
    try:
        return await db.run(fn)
    finally:
        CURRENT_FENCE.reset(reset)


def probes(db: Database) -> list[int]:
    with db.session() as session:
        return [r for (r,) in session.execute(text("SELECT id FROM fence_probe ORDER BY id"))]


def insert_text(session: Session) -> None:
    session.execute(text("INSERT INTO fence_probe (id, note) VALUES (:i, :n)"), {"i": 1, "n": "text"})


def insert_many(session: Session) -> None:
    session.execute(
        text("INSERT INTO fence_probe (id, note) VALUES (:i, :n)"), [{"i": 2, "n": "a"}, {"i": 3, "n": "b"}]
    )


def insert_in_savepoint(session: Session) -> None:
    with session.begin_nested():
        session.execute(text("INSERT INTO fence_probe (id) VALUES (4)"))


def orm_add_only(session: Session) -> None:
    session.add(Zone(uuid="f" * 32, name="z"))  # no statement until the flush at commit


def insert_no_params(session: Session) -> None:
    session.execute(text("INSERT INTO fence_probe (id, note) VALUES (6, '100%')"))


FIRST_STATEMENTS = [insert_text, insert_many, insert_in_savepoint, orm_add_only, insert_no_params]


@pytest.mark.parametrize("fn", FIRST_STATEMENTS, ids=lambda f: f.__name__)
async def test_the_holder_writes_and_a_stale_holder_changes_nothing(db, fn):
    with pytest.raises(RingstackError) as err:
        await fenced(db, fn, token=TOKEN - 1)
    assert err.value.code == Sys.NOT_OWNER
    assert err.value.details == {"partition": PARTITION}
    with db.session() as session:
        assert session.scalar(text("SELECT count(*) FROM zone")) == 0
    assert probes(db) == []

    await fenced(db, fn)
    with db.session() as session:
        written = len(probes(db)) + int(session.scalar(text("SELECT count(*) FROM zone")) or 0)
    assert written >= 1


async def test_an_armed_connection_that_sent_nothing_goes_back_to_the_pool_disarmed(db):
    for _ in range(3):  # a stale fence on a transaction without statements: nothing to refuse
        await fenced(db, lambda session: None, token=TOKEN - 1)
    for i in range(3):  # and the pooled connections carry nothing over to unfenced work
        await db.run(
            lambda session, i=i: session.execute(text("INSERT INTO fence_probe (id) VALUES (:i)"), {"i": i})
        )
    assert probes(db) == [0, 1, 2]


async def test_a_takeover_waits_for_the_fenced_transaction_in_flight(db):
    wrote, release, took_over = threading.Event(), threading.Event(), threading.Event()

    def slow_write(session: Session) -> None:
        insert_text(session)
        wrote.set()
        release.wait(10)  # the fenced transaction stays open until the test lets it commit

    write = asyncio.create_task(fenced(db, slow_write))
    await asyncio.to_thread(wrote.wait, 10)

    def take_over() -> None:
        with db.session() as session, session.begin():
            session.execute(
                text(
                    "UPDATE ring_partition SET owner_node_uuid = :n, token = token + 1 WHERE partition = :p"
                ),
                {"n": "d" * 32, "p": PARTITION},
            )
        took_over.set()

    takeover = asyncio.create_task(asyncio.to_thread(take_over))
    # While the fenced transaction is open the takeover cannot commit (its FOR SHARE lock holds it).
    assert not await asyncio.to_thread(took_over.wait, 0.5)
    release.set()
    await write
    await takeover
    assert took_over.is_set()
    with pytest.raises(RingstackError) as err:  # and the old holder is refused from then on
        await fenced(db, insert_many)
    assert err.value.code == Sys.NOT_OWNER


async def test_a_cancelled_caller_returns_only_once_its_transaction_ended(db):
    started = threading.Event()

    def slow_write(session: Session) -> None:
        started.set()
        time.sleep(0.5)
        insert_text(session)

    task = asyncio.create_task(db.run(slow_write))
    await asyncio.to_thread(started.wait, 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert probes(db) == [1]  # committed before the cancellation reached the caller
