"""AccountSessionAuth's cache, with a fake database and fake clocks: hits skip the database,
entries end at the cache lifetime or the session's expiry, invalidations win races."""

from __future__ import annotations

import asyncio

import pytest

from bus.errors import RingstackError, Sys
from mgmt.core.auth import AccountSessionAuth
from mgmt.core.service import Account

ALICE = Account("a" * 32, "alice", False)
BOB = Account("b" * 32, "bob", True)
S1, S2, S3 = "1" * 32, "2" * 32, "3" * 32


class FakeDb:
    """Answers the session lookup from a dict; counts how often it was asked."""

    def __init__(self, sessions: dict[str, tuple[Account, float]]) -> None:
        self.sessions = sessions
        self.calls = 0
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()

    async def run(self, fn, session_uuid):
        self.calls += 1
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        return self.sessions.get(session_uuid)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clocks():
    return Clock(100.0), Clock(1_000_000.0)


def make(db, clocks, **kw) -> AccountSessionAuth:
    mono, wall = clocks
    return AccountSessionAuth(db, clock=mono, wall_clock=wall, **kw)  # type: ignore[arg-type]


async def test_hits_skip_the_database_until_the_ttl(clocks):
    mono, wall = clocks
    db = FakeDb({S1: (ALICE, wall.now + 3600)})
    auth = make(db, clocks, cache_ttl=5)
    assert await auth.authenticate(S1, "QueryZone") == ALICE
    assert await auth.authenticate(S1, "QueryZone") == ALICE
    assert db.calls == 1
    mono.now += 4.9
    assert await auth.lookup(S1) == ALICE and db.calls == 1
    mono.now += 0.2
    assert await auth.lookup(S1) == ALICE and db.calls == 2  # read again after the TTL


async def test_a_cached_session_is_never_used_past_its_expiry(clocks):
    _, wall = clocks
    db = FakeDb({S1: (ALICE, wall.now + 1)})
    auth = make(db, clocks, cache_ttl=60)
    assert await auth.lookup(S1) == ALICE
    wall.now += 1.5
    del db.sessions[S1]  # the database no longer returns it (expired there too)
    assert await auth.lookup(S1) is None
    assert db.calls == 2


async def test_missing_malformed_and_unknown_sessions_need_auth(clocks):
    db = FakeDb({})
    auth = make(db, clocks)
    for session in (None, ""):
        with pytest.raises(RingstackError) as err:
            await auth.authenticate(session, "QueryZone")
        assert err.value.code == Sys.AUTH_REQUIRED and "QueryZone" in err.value.message
    for session in ("x", "A" * 32, "1" * 33, "' or 1=1 --"):
        assert await auth.lookup(session) is None
    assert db.calls == 0  # malformed: never reaches the database
    with pytest.raises(RingstackError) as err:
        await auth.authenticate(S1, "QueryZone")
    assert err.value.code == Sys.AUTH_REQUIRED and db.calls == 1
    assert await auth.lookup(S1) is None and db.calls == 2  # unknown sessions are not cached


async def test_invalidation_by_session_and_by_account(clocks):
    _, wall = clocks
    db = FakeDb({S1: (ALICE, wall.now + 60), S2: (ALICE, wall.now + 60), S3: (BOB, wall.now + 60)})
    auth = make(db, clocks, cache_ttl=60)
    for s in (S1, S2, S3):
        await auth.lookup(s)
    assert db.calls == 3
    auth.invalidate_session(S1)
    del db.sessions[S1]
    assert await auth.lookup(S1) is None
    auth.invalidate_account(ALICE.uuid)
    del db.sessions[S2]
    assert await auth.lookup(S2) is None
    assert await auth.lookup(S3) == BOB and db.calls == 5  # bob's stayed cached
    auth.clear()
    assert await auth.lookup(S3) == BOB and db.calls == 6


async def test_an_invalidation_during_a_lookup_keeps_its_result_out_of_the_cache(clocks):
    _, wall = clocks
    db = FakeDb({S1: (ALICE, wall.now + 60)})
    auth = make(db, clocks, cache_ttl=60)
    db.gate = asyncio.Event()
    lookup = asyncio.create_task(auth.lookup(S1))
    await asyncio.wait_for(db.entered.wait(), 5)
    auth.invalidate_session(S1)  # e.g. LogOut's event arrives while the read is in flight
    db.gate.set()
    assert await lookup == ALICE  # it was valid when read ...
    db.gate = None
    del db.sessions[S1]
    assert await auth.lookup(S1) is None  # ... but was not cached: the next call asks again
    assert db.calls == 2


async def test_the_cache_is_bounded(clocks):
    _, wall = clocks
    sessions = {f"{i:032x}": (ALICE, wall.now + 60) for i in range(10)}
    db = FakeDb(sessions)
    auth = make(db, clocks, cache_ttl=60, max_entries=4)
    for s in sessions:
        await auth.lookup(s)
    assert db.calls == 10
    for s in list(sessions)[-4:]:  # the newest four are answered from the cache ...
        assert await auth.lookup(s) == ALICE
    assert db.calls == 10
    for s in list(sessions)[:6]:  # ... the older ones were dropped, oldest first: asked again
        await auth.lookup(s)
    assert db.calls == 16


async def test_entries_cached_before_a_feed_gap_are_dropped(clocks):
    """After a reconnect (the feed epoch changes) invalidation events may have been missed."""
    _, wall = clocks
    db = FakeDb({S1: (ALICE, wall.now + 60)})
    epoch = [1]
    auth = make(db, clocks, cache_ttl=60, feed_epoch=lambda: epoch[0])
    assert await auth.lookup(S1) == ALICE
    assert await auth.lookup(S1) == ALICE and db.calls == 1
    epoch[0] = 2
    del db.sessions[S1]  # logged out while this node's feed was down
    assert await auth.lookup(S1) is None and db.calls == 2
