"""Identity through the public API: sessions, accounts, permissions, sharing and quotas, on the real
broker and database. Tenant resources are zones made by a test-only service (tests/support/identity.py)
that creates them owned by the caller, under a test quota."""

from __future__ import annotations

import asyncio
import os
import stat
from datetime import datetime, timedelta

import pytest
from sqlalchemy import create_engine, func, select

from bus.envelope import Envelope
from bus.errors import RingstackError, Sys
from mgmt.core import migrate
from mgmt.core.access import forget_sharing
from mgmt.core.cascade import CascadeRule
from mgmt.core.service import SYSTEM_ACCOUNT, CallContext
from mgmt.node import ManagementNode
from mgmt.services.identity.errors import (
    AUTHENTICATION_FAILED,
    CANNOT_DELETE_SELF,
    LAST_ADMIN,
    QUOTA_EXCEEDED,
)
from schema.api.identity import DeleteAccount, LogOut
from schema.db.identity import Account as AccountRow
from schema.db.identity import SharedResource
from tests.support import infra
from tests.support.cluster import until
from tests.support.identity import ADMIN_PASSWORD, TEST_QUOTA
from tests.support.procs import node_env, run_cli

IDENTITY_TEST_SERVICE = "tests.support.identity:IdentityTestService"


@pytest.fixture
def node_config(node_config):
    """Every node here also runs the test service, and has one configured quota default."""
    return node_config.model_copy(
        update={"extra_services": [IDENTITY_TEST_SERVICE], "quota_defaults": {"vm.num": 7}}
    )


async def _expect(code: str, call) -> RingstackError:
    with pytest.raises(RingstackError) as err:
        await call
    assert err.value.code == code, err.value
    return err.value


async def _events(client, name: str, *patterns: str) -> asyncio.Queue:
    received: asyncio.Queue = asyncio.Queue()

    async def on_event(env):
        received.put_nowait((env.name, env.body))

    await client.start_consumer(client.consume(client.topology.event_queue(name, *patterns), on_event))
    return received


def _zone_uuids(reply) -> set[str]:
    return {z["uuid"] for z in reply["inventories"]}


def _identity(node):
    return next(s for s in node.services if s.name == "identity")


def _system_ctx() -> CallContext:
    return CallContext(Envelope(name="internal", kind="call"), SYSTEM_ACCOUNT)


# ---------------------------------------------------------------- sessions


async def test_admin_login_validate_logout(node, client):
    before = datetime.now().astimezone()
    inv = (await client.api("LogInByAccount", {"accountName": "admin", "password": ADMIN_PASSWORD}))[
        "inventory"
    ]
    assert len(inv["uuid"]) == 32
    expires = datetime.fromisoformat(inv["expiredDate"])
    # default session_timeout: 7200 s
    assert before + timedelta(seconds=7190) < expires < before + timedelta(seconds=7210)
    me = client.as_session(inv["uuid"])
    accounts = (await me.api("QueryAccount", {}))["inventories"]
    assert [(a["name"], a["type"], a["uuid"]) for a in accounts] == [("admin", "Admin", inv["accountUuid"])]
    assert "passwordHash" not in accounts[0]
    assert (await client.api("ValidateSession", {"sessionUuid": inv["uuid"]})) == {"validSession": True}

    assert await client.api("LogOut", {"sessionUuid": inv["uuid"]}) == {}
    assert (await client.api("ValidateSession", {"sessionUuid": inv["uuid"]})) == {"validSession": False}
    await _expect(Sys.AUTH_REQUIRED, me.api("QueryZone", {}))
    assert await client.api("LogOut", {"sessionUuid": inv["uuid"]}) == {}  # again: still fine


async def test_wrong_password_and_unknown_account_look_the_same(node, client):
    wrong = await _expect(
        AUTHENTICATION_FAILED, client.api("LogInByAccount", {"accountName": "admin", "password": "nope"})
    )
    unknown = await _expect(
        AUTHENTICATION_FAILED, client.api("LogInByAccount", {"accountName": "nobody", "password": "nope"})
    )
    assert (wrong.message, wrong.details) == (unknown.message, unknown.details)
    assert "admin" not in wrong.message and "nobody" not in unknown.message


async def test_non_public_apis_need_a_valid_session(node, client):
    for session in (None, "", "not-a-session", "F" * 32, "f" * 31, "f" * 32):
        err = await _expect(Sys.AUTH_REQUIRED, client.as_session(session).api("QueryZone", {}))
        assert "LogInByAccount" in err.message, session
        # public APIs need none
        reply = await client.as_session(session).api("ValidateSession", {"sessionUuid": "f" * 32})
        assert reply == {"validSession": False}


@pytest.fixture
async def short_session_node(node_config):
    """A node whose sessions last one second."""
    n = ManagementNode(node_config.model_copy(update={"session_timeout": 1.0}))
    await n.start()
    try:
        yield n
    finally:
        await n.stop()


async def test_sessions_expire(short_session_node, client):
    session = await client.login("admin", ADMIN_PASSWORD)
    assert (await session.api("QueryZone", {}))["inventories"] == []  # valid now (and now cached)

    async def expired():
        reply = await client.as_session(None).api("ValidateSession", {"sessionUuid": session.session})
        return not reply["validSession"]

    await until(expired, 10, "session expiry")
    err = await _expect(Sys.AUTH_REQUIRED, session.api("QueryZone", {}))
    assert "expired" in err.message


# ---------------------------------------------------------------- validation

LONG = "x" * 256
U = "a" * 32


VALIDATION_CASES = [
    ("CreateAccount", {"password": "password1"}, "name"),
    ("CreateAccount", {"name": "", "password": "password1"}, "name"),
    ("CreateAccount", {"name": " padded", "password": "password1"}, "name"),
    ("CreateAccount", {"name": "padded ", "password": "password1"}, "name"),
    ("CreateAccount", {"name": LONG, "password": "password1"}, "name"),
    ("CreateAccount", {"name": "a"}, "password"),
    ("CreateAccount", {"name": "a", "password": "short"}, "password"),
    ("CreateAccount", {"name": "a", "password": LONG}, "password"),
    ("CreateAccount", {"name": "a", "password": "password1", "type": "Root"}, "type"),
    ("CreateAccount", {"name": "a", "password": "password1", "description": "d" * 2049}, "description"),
    ("CreateAccount", {"name": "a", "password": "password1", "passwordHash": "x"}, "passwordHash"),
    ("CreateAccount", {"name": "a", "password": "password1", "resourceUuid": "x"}, "resourceUuid"),
    ("UpdateAccount", {"name": "a"}, "uuid"),
    ("UpdateAccount", {"uuid": "nope"}, "uuid"),
    ("UpdateAccount", {"uuid": U, "password": "short"}, "password"),
    ("UpdateAccount", {"uuid": U, "name": ""}, "name"),
    ("UpdateAccount", {"uuid": U, "type": "Admin"}, "type"),
    ("DeleteAccount", {"uuid": U, "deleteMode": "Always"}, "deleteMode"),
    ("DeleteAccount", {}, "uuid"),
    ("QueryAccount", {"limit": -1}, "limit"),
    ("LogInByAccount", {"password": "x"}, "accountName"),
    ("LogInByAccount", {"accountName": "admin"}, "password"),
    ("LogInByAccount", {"accountName": "admin", "password": ""}, "password"),
    ("LogInByAccount", {"accountName": LONG, "password": "x"}, "accountName"),
    ("LogOut", {}, "sessionUuid"),
    ("LogOut", {"sessionUuid": "nope"}, "sessionUuid"),
    ("ValidateSession", {"sessionUuid": "F" * 32}, "sessionUuid"),
    ("ShareResource", {"toPublic": True}, "resourceUuids"),
    ("ShareResource", {"resourceUuids": [], "toPublic": True}, "resourceUuids"),
    ("ShareResource", {"resourceUuids": ["x"], "toPublic": True}, "resourceUuids.0"),
    ("ShareResource", {"resourceUuids": [U], "accountUuids": ["x"]}, "accountUuids.0"),
    ("ShareResource", {"resourceUuids": [U]}, "(body)"),
    ("ShareResource", {"resourceUuids": [U], "accountUuids": []}, "(body)"),
    ("RevokeResourceSharing", {"resourceUuids": [U]}, "(body)"),
    ("RevokeResourceSharing", {"resourceUuids": [U], "all": "sometimes"}, "all"),
    ("UpdateQuota", {"name": "vm.num", "value": 1}, "identityUuid"),
    ("UpdateQuota", {"identityUuid": U, "value": 1}, "name"),
    ("UpdateQuota", {"identityUuid": U, "name": "vm num", "value": 1}, "name"),
    ("UpdateQuota", {"identityUuid": U, "name": "vm.num"}, "value"),
    ("UpdateQuota", {"identityUuid": U, "name": "vm.num", "value": -1}, "value"),
    ("UpdateQuota", {"identityUuid": U, "name": "vm.num", "value": "many"}, "value"),
    ("QueryQuota", {"sortDirection": "sideways"}, "sortDirection"),
]


async def test_validation_errors_name_the_field(node, client):
    # One node for all cases (a node per case would cost more than the cases themselves).
    for name, body, field in VALIDATION_CASES:
        try:
            await client.api(name, body)
        except RingstackError as err:
            assert err.code == Sys.INVALID_ARGUMENT, (name, body, err)
            assert field in [e["field"] for e in err.details["errors"]], (name, body, err.details)
        else:
            pytest.fail(f"{name} {body} was accepted")
    assert len((await client.api("QueryAccount", {}))["inventories"]) == 1  # nothing was created


async def test_unknown_quota_name_and_unknown_account(node, client):
    err = await _expect(
        Sys.INVALID_ARGUMENT, client.api("UpdateQuota", {"identityUuid": U, "name": "vm.nope", "value": 1})
    )
    assert err.details["field"] == "name" and "vm.num" in err.message
    await _expect(Sys.NOT_FOUND, client.api("UpdateQuota", {"identityUuid": U, "name": "vm.num", "value": 1}))


# ---------------------------------------------------------------- accounts and permissions


async def test_account_lifecycle_and_events(node, client):
    events = await _events(client, "idacct", "account.#")
    alice = (await client.api("CreateAccount", {"name": "alice", "password": "alice-pw-1"}))["inventory"]
    assert (alice["name"], alice["type"]) == ("alice", "Normal")
    await _expect(Sys.CONFLICT, client.api("CreateAccount", {"name": "alice", "password": "another-pw"}))

    renamed = await client.api("UpdateAccount", {"uuid": alice["uuid"], "name": "alice2", "description": "d"})
    assert (renamed["inventory"]["name"], renamed["inventory"]["description"]) == ("alice2", "d")
    await _expect(Sys.CONFLICT, client.api("UpdateAccount", {"uuid": alice["uuid"], "name": "admin"}))
    await client.api("UpdateAccount", {"uuid": alice["uuid"], "password": "reset-by-admin"})
    await _expect(AUTHENTICATION_FAILED, client.login("alice2", "alice-pw-1"))
    assert (await client.login("alice2", "reset-by-admin")).account_uuid == alice["uuid"]

    assert await client.api("DeleteAccount", {"uuid": alice["uuid"]}) == {}
    assert await client.api("DeleteAccount", {"uuid": alice["uuid"]}) == {}  # already gone: fine
    await _expect(AUTHENTICATION_FAILED, client.login("alice2", "reset-by-admin"))

    got = [await asyncio.wait_for(events.get(), 5) for _ in range(4)]
    assert [name for name, _ in got] == [
        "account.created",
        "account.updated",
        "account.updated",
        "account.deleted",
    ]
    assert all(body["resourceUuid"] == alice["uuid"] for _, body in got)
    assert "passwordHash" not in got[0][1]["inventory"] and "password" not in got[0][1]["inventory"]


async def test_normal_accounts_see_and_change_only_themselves(node, client):
    bob = await client.new_account("bob", "bob-pw-123")
    carol = await client.new_account("carol", "carol-pw-123")

    mine = (await bob.api("QueryAccount", {}))["inventories"]
    assert [a["name"] for a in mine] == ["bob"]
    assert {a["name"] for a in (await client.api("QueryAccount", {}))["inventories"]} == {
        "admin",
        "bob",
        "carol",
    }

    # Its own name, description and password: yes, and its sessions go on.
    await bob.api("UpdateAccount", {"uuid": bob.account_uuid, "name": "bobby", "password": "bobby-pw-1"})
    assert (await client.login("bobby", "bobby-pw-1")).account_uuid == bob.account_uuid
    assert [a["name"] for a in (await bob.api("QueryAccount", {}))["inventories"]] == ["bobby"]
    # An admin's password reset ends every session of the account.
    await client.api("UpdateAccount", {"uuid": carol.account_uuid, "password": "reset-pw-12"})
    await _expect(Sys.AUTH_REQUIRED, carol.api("QueryAccount", {}))
    carol = await client.login("carol", "reset-pw-12")
    # Another account: not even found.
    await _expect(Sys.NOT_FOUND, bob.api("UpdateAccount", {"uuid": carol.account_uuid, "name": "x"}))

    for name, body in [
        ("CreateZone", {"name": "z"}),
        ("CreateAccount", {"name": "eve", "password": "eve-pw-123"}),
        ("DeleteAccount", {"uuid": carol.account_uuid}),
        ("UpdateQuota", {"identityUuid": bob.account_uuid, "name": "vm.num", "value": 1000}),
    ]:
        err = await _expect(Sys.PERMISSION_DENIED, bob.api(name, body))
        assert name in err.message
    assert len((await client.api("QueryAccount", {}))["inventories"]) == 3


async def test_admins_create_admins_but_none_deletes_itself_or_the_last_admin(node, client):
    root = (await client.api("QueryAccount", {}))["inventories"][0]
    second = await client.new_account("second-admin", "second-pw-1", account_type="Admin")
    assert {a["name"] for a in (await second.api("QueryAccount", {}))["inventories"]} == {
        "admin",
        "second-admin",
    }
    await _expect(CANNOT_DELETE_SELF, second.api("DeleteAccount", {"uuid": second.account_uuid}))
    await second.api("DeleteAccount", {"uuid": root["uuid"]})
    # Internal callers run as the system account, which is no account row: the guard still holds.
    with pytest.raises(RingstackError) as err:
        await _identity(node).delete_account(DeleteAccount(uuid=second.account_uuid), _system_ctx())
    assert err.value.code == LAST_ADMIN


async def test_deleting_an_account_ends_its_sessions_at_once(node, client):
    dave = await client.new_account("dave", "dave-pw-123")
    assert (await dave.api("QueryZone", {}))["inventories"] == []  # cached as valid now
    await client.api("DeleteAccount", {"uuid": dave.account_uuid})
    await _expect(Sys.AUTH_REQUIRED, dave.api("QueryZone", {}))
    assert (await client.api("ValidateSession", {"sessionUuid": dave.session}))["validSession"] is False


async def test_delete_account_refuses_while_it_owns_resources(node, client):
    erin = await client.new_account("erin", "erin-pw-123")
    zone = await erin.api("IdentityTestMakeZone", {"name": "erins"})
    for mode in ("Permissive", "Enforcing"):  # no cascade rule covers zones: both refuse
        err = await _expect(
            Sys.RESOURCE_IN_USE, client.api("DeleteAccount", {"uuid": erin.account_uuid, "deleteMode": mode})
        )
        assert err.details["resources"] == {"zone": 1}
    assert (await erin.api("QueryZone", {}))["inventories"][0]["uuid"] == zone["uuid"]  # still there

    # A service that owns a table registers a cascade rule under "account"; Enforcing then uses it.
    def owned_zones(session, parent_kind, uuids):
        from schema.db.zone import Zone

        return list(session.scalars(select(Zone.uuid).where(Zone.owner_account_uuid.in_(uuids))))

    def delete_zones(session, uuids):
        from sqlalchemy import delete

        from schema.db.zone import Zone

        session.execute(delete(Zone).where(Zone.uuid.in_(uuids)))

    node.cascade.register(CascadeRule("zone", ("account",), owned_zones, delete_zones))
    events = await _events(client, "idcascade", "zone.*.deleted", "account.*.deleted")
    await _expect(Sys.RESOURCE_IN_USE, client.api("DeleteAccount", {"uuid": erin.account_uuid}))
    await client.api("DeleteAccount", {"uuid": erin.account_uuid, "deleteMode": "Enforcing"})
    assert (await client.api("QueryZone", {}))["inventories"] == []
    got = [await asyncio.wait_for(events.get(), 5) for _ in range(2)]
    assert [name for name, _ in got] == ["zone.deleted", "account.deleted"]


# ---------------------------------------------------------------- visibility and sharing


async def test_each_account_sees_its_own_resources_plus_what_is_shared(node, client):
    frank = await client.new_account("frank", "frank-pw-12")
    grace = await client.new_account("grace", "grace-pw-12")
    heidi = await client.new_account("heidi", "heidi-pw-12")
    f1 = (await frank.api("IdentityTestMakeZone", {"name": "f1"}))["uuid"]
    f2 = (await frank.api("IdentityTestMakeZone", {"name": "f2"}))["uuid"]
    g1 = (await grace.api("IdentityTestMakeZone", {"name": "g1"}))["uuid"]

    assert _zone_uuids(await frank.api("QueryZone", {})) == {f1, f2}
    assert _zone_uuids(await grace.api("QueryZone", {})) == {g1}
    assert _zone_uuids(await heidi.api("QueryZone", {})) == set()
    assert _zone_uuids(await client.api("QueryZone", {})) == {f1, f2, g1}
    assert (await grace.api("QueryZone", {"count": True}))["total"] == 1
    await _expect(Sys.NOT_FOUND, grace.api("IdentityTestUseZone", {"zoneUuid": f1}))
    # Someone else's resource is invisible, so it cannot be shared either.
    await _expect(Sys.NOT_FOUND, grace.api("ShareResource", {"resourceUuids": [f1], "toPublic": True}))

    events = await _events(client, "idshare", "zone.*.shared", "zone.*.revoked")
    share = {"resourceUuids": [f1], "accountUuids": [grace.account_uuid]}
    assert await frank.api("ShareResource", share) == {}
    assert await frank.api("ShareResource", share) == {}  # twice: a no-op
    assert _zone_uuids(await grace.api("QueryZone", {})) == {g1, f1}
    assert _zone_uuids(await heidi.api("QueryZone", {})) == set()
    assert (await grace.api("IdentityTestUseZone", {"zoneUuid": f1}))[
        "ownerAccountUuid"
    ] == frank.account_uuid
    # Shared is read/use-only: the receiver cannot pass it on.
    await _expect(
        Sys.PERMISSION_DENIED,
        grace.api("ShareResource", {"resourceUuids": [f1], "accountUuids": [heidi.account_uuid]}),
    )
    await _expect(
        Sys.PERMISSION_DENIED, grace.api("RevokeResourceSharing", {"resourceUuids": [f1], "all": True})
    )

    await frank.api("ShareResource", {"resourceUuids": [f2], "toPublic": True})
    assert _zone_uuids(await heidi.api("QueryZone", {})) == {f2}
    assert _zone_uuids(await grace.api("QueryZone", {})) == {g1, f1, f2}

    await frank.api("RevokeResourceSharing", {"resourceUuids": [f1], "accountUuids": [grace.account_uuid]})
    assert _zone_uuids(await grace.api("QueryZone", {})) == {g1, f2}
    await _expect(Sys.NOT_FOUND, grace.api("IdentityTestUseZone", {"zoneUuid": f1}))
    await frank.api("RevokeResourceSharing", {"resourceUuids": [f2], "toPublic": True})
    assert _zone_uuids(await heidi.api("QueryZone", {})) == set()
    assert await frank.api("RevokeResourceSharing", {"resourceUuids": [f2], "toPublic": True}) == {}

    # The admin may share (and revoke) anyone's resource; all=true revokes every kind of sharing.
    await client.api(
        "ShareResource", {"resourceUuids": [g1], "accountUuids": [heidi.account_uuid], "toPublic": True}
    )
    assert _zone_uuids(await frank.api("QueryZone", {})) == {f1, f2, g1}
    await client.api("RevokeResourceSharing", {"resourceUuids": [g1], "all": True})
    assert _zone_uuids(await heidi.api("QueryZone", {})) == set()
    assert _zone_uuids(await frank.api("QueryZone", {})) == {f1, f2}

    got = [await asyncio.wait_for(events.get(), 5) for _ in range(6)]
    assert [(name, body["resourceUuid"]) for name, body in got] == [
        ("zone.shared", f1),
        ("zone.shared", f1),
        ("zone.shared", f2),
        ("zone.revoked", f1),
        ("zone.revoked", f2),
        ("zone.shared", g1),
    ]
    assert got[0][1]["inventory"] == {"accountUuids": [grace.account_uuid], "toPublic": False}
    last = await asyncio.wait_for(events.get(), 5)
    assert last[0] == "zone.revoked"
    assert last[1]["inventory"] == {"accountUuids": [heidi.account_uuid], "toPublic": True}


async def test_share_errors(node, client):
    ivan = await client.new_account("ivan", "ivan-pw-123")
    zone = (await ivan.api("IdentityTestMakeZone", {"name": "i"}))["uuid"]
    err = await _expect(Sys.NOT_FOUND, ivan.api("ShareResource", {"resourceUuids": [U], "toPublic": True}))
    assert err.details["uuid"] == U
    # An account uuid that names no account is skipped: refusing it would tell which accounts exist.
    await ivan.api("ShareResource", {"resourceUuids": [zone], "accountUuids": [U]})
    assert await node.db.run(lambda s: s.scalar(select(func.count()).select_from(SharedResource))) == 0
    # Accounts are not shareable resources.
    await _expect(
        Sys.NOT_FOUND, client.api("ShareResource", {"resourceUuids": [ivan.account_uuid], "toPublic": True})
    )


async def test_deleting_services_drop_the_sharing_of_what_they_delete(node, client):
    judy = await client.new_account("judy", "judy-pw-123")
    zone = (await client.api("IdentityTestMakeZone", {"name": "shared"}))["uuid"]
    await client.api("ShareResource", {"resourceUuids": [zone], "accountUuids": [judy.account_uuid]})
    assert _zone_uuids(await judy.api("QueryZone", {})) == {zone}

    def count(session):
        return session.scalar(select(func.count()).select_from(SharedResource))

    assert await node.db.run(count) == 1
    await node.db.run(forget_sharing, [zone])
    assert await node.db.run(count) == 0
    assert _zone_uuids(await judy.api("QueryZone", {})) == set()


# ---------------------------------------------------------------- quotas


async def test_quotas_query_update_and_exhaustion(node, client):
    judy = await client.new_account("judy", "judy-pw-123")
    mallory = await client.new_account("mallory", "mallory-pw-1")

    quotas = {q["name"]: q for q in (await judy.api("QueryQuota", {}))["inventories"]}
    assert {"vm.num", "vm.cpuNum", "vm.memorySize", "l3.ipNum", "volume.num", TEST_QUOTA} <= set(quotas)
    assert {q["identityUuid"] for q in quotas.values()} == {judy.account_uuid}  # only its own
    assert quotas["vm.num"]["value"] == 7  # from the node config's quota_defaults
    assert quotas["vm.cpuNum"]["value"] == 80  # built-in default
    assert quotas[TEST_QUOTA]["value"] == 5

    events = await _events(client, "idquota", "quota.#")
    updated = (
        await client.api("UpdateQuota", {"identityUuid": judy.account_uuid, "name": TEST_QUOTA, "value": 2})
    )["inventory"]
    assert updated == {**quotas[TEST_QUOTA], "value": 2}  # the same quota (uuid), a new value
    name, body = await asyncio.wait_for(events.get(), 5)
    assert (name, body["resourceUuid"], body["inventory"]["value"]) == ("quota.updated", updated["uuid"], 2)
    by_admin = await client.api(
        "QueryQuota",
        {
            "conditions": [
                {"name": "name", "op": "=", "value": TEST_QUOTA},
                {"name": "value", "op": "<", "value": 5},
            ]
        },
    )
    assert [(q["identityUuid"], q["value"]) for q in by_admin["inventories"]] == [(judy.account_uuid, 2)]

    await judy.api("IdentityTestMakeZone", {"name": "j1"})
    await judy.api("IdentityTestMakeZone", {"name": "j2"})
    err = await _expect(QUOTA_EXCEEDED, judy.api("IdentityTestMakeZone", {"name": "j3"}))
    assert err.details == {"quota": TEST_QUOTA, "limit": 2, "used": 2, "requested": 1}
    # Other accounts keep the default; admins have no quota.
    for i in range(3):
        await mallory.api("IdentityTestMakeZone", {"name": f"m{i}"})
    for i in range(6):
        await client.api("IdentityTestMakeZone", {"name": f"a{i}"})
    # Raising the limit lets the account go on.
    await client.api("UpdateQuota", {"identityUuid": judy.account_uuid, "name": TEST_QUOTA, "value": 3})
    await judy.api("IdentityTestMakeZone", {"name": "j3"})
    assert len((await judy.api("QueryZone", {}))["inventories"]) == 3


async def test_concurrent_allocations_never_exceed_the_quota(node, client):
    """20 concurrent creates for an account with limit 5: the per-account advisory lock lets
    exactly 5 through, whatever the interleaving."""
    oscar = await client.new_account("oscar", "oscar-pw-12")
    results = await asyncio.gather(
        *(oscar.api("IdentityTestMakeZone", {"name": f"o{i}"}, timeout=30) for i in range(20)),
        return_exceptions=True,
    )
    ok = [r for r in results if isinstance(r, dict)]
    refused = [r for r in results if isinstance(r, RingstackError) and r.code == QUOTA_EXCEEDED]
    assert (len(ok), len(refused)) == (5, 15), results
    assert (await oscar.api("QueryZone", {"count": True}))["total"] == 5


# ---------------------------------------------------------------- plumbing


async def test_bootstrap_admin_is_created_once_by_nodes_starting_together(node_config, client):
    config = node_config.model_copy(update={"admin_initial_password": "first-start-pw"})
    nodes = [ManagementNode(config) for _ in range(3)]
    try:
        await asyncio.gather(*(n.start() for n in nodes))
        engine = create_engine(config.database_url)
        try:
            with engine.connect() as conn:
                admins = conn.execute(select(func.count()).where(AccountRow.name == "admin")).scalar()
        finally:
            engine.dispose()
        assert admins == 1
        await _expect(AUTHENTICATION_FAILED, client.login("admin", ADMIN_PASSWORD))
        assert (await client.login("admin", "first-start-pw")).session
    finally:
        await asyncio.gather(*(n.stop() for n in nodes))


async def test_logout_on_one_node_ends_the_session_cached_on_another(node, node_config, client):
    other = ManagementNode(node_config)
    await other.start()
    try:
        peggy = await client.new_account("peggy", "peggy-pw-12")
        # Cached on the other node with a long lifetime: only the invalidation event can end it.
        other.auth.cache_ttl = 600
        assert (await other.auth.lookup(peggy.session)).uuid == peggy.account_uuid
        # Logged out on the first node (called there directly: the API queue could pick either).
        await _identity(node).log_out(LogOut(session_uuid=peggy.session), _system_ctx())
        assert await node.auth.lookup(peggy.session) is None

        async def gone():
            return await other.auth.lookup(peggy.session) is None

        await until(gone, 5, "invalidation on the other node")

        quinn = await client.new_account("quinn", "quinn-pw-12")
        assert await other.auth.lookup(quinn.session) is not None
        await _identity(node).delete_account(DeleteAccount(uuid=quinn.account_uuid), _system_ctx())

        async def quinn_gone():
            return await other.auth.lookup(quinn.session) is None

        await until(quinn_gone, 5, "account invalidation on the other node")
    finally:
        await other.stop()


class FakeDirectory:
    """A second PasswordVerifier: maps directory users to local accounts, as LDAP would."""

    name = "fake-directory"

    def __init__(self, users: dict[str, tuple[str, object]]) -> None:
        self.users = users
        self.asked: list[str] = []

    async def verify(self, account_name, password):
        self.asked.append(account_name)
        entry = self.users.get(account_name)
        return entry[1] if entry is not None and entry[0] == password else None


async def test_a_second_password_verifier_plugs_into_login(node, client):
    from mgmt.core.service import Account

    rita = await client.new_account("rita", "rita-pw-123")
    identity = next(s for s in node.services if s.name == "identity")
    directory = FakeDirectory({"rita@corp": ("directory-pw", Account(rita.account_uuid, "rita", False))})
    identity.add_password_verifier(directory)

    via_directory = await client.login("rita@corp", "directory-pw")
    assert via_directory.account_uuid == rita.account_uuid
    assert [a["name"] for a in (await via_directory.api("QueryAccount", {}))["inventories"]] == ["rita"]
    assert (await client.login("rita", "rita-pw-123")).account_uuid == rita.account_uuid  # local first
    await _expect(AUTHENTICATION_FAILED, client.login("rita@corp", "wrong"))
    assert directory.asked == ["rita@corp", "rita@corp"]


async def test_cli_keeps_its_session_in_a_private_file(node, namespace, database_url, broker_url, tmp_path):
    env = {**node_env(database_url, namespace, broker_url), "XDG_CONFIG_HOME": str(tmp_path)}
    env.pop("RINGSTACK_SESSION", None)
    session_file = tmp_path / "ringstack" / "session"

    def cli(*args):
        return asyncio.to_thread(run_cli, list(args), env)

    denied = await cli("QueryZone")
    assert denied.returncode == 1 and "SYS.AUTH_REQUIRED" in denied.stderr
    bad = await cli("LogInByAccount", "accountName=admin", "password=wrong")
    assert bad.returncode == 1 and AUTHENTICATION_FAILED in bad.stderr
    assert not session_file.exists()

    login = await cli("LogInByAccount", "accountName=admin", f"password={ADMIN_PASSWORD}", "-f", "json")
    assert login.returncode == 0, login.stderr
    assert stat.S_IMODE(os.stat(session_file).st_mode) == 0o600
    assert len(session_file.read_text().strip()) == 32
    assert (await cli("CreateZone", "name=by-cli")).returncode == 0
    listed = await cli("QueryZone", "fields=name", "-f", "json")
    assert listed.returncode == 0 and "by-cli" in listed.stdout
    # An explicit --session wins over the file.
    assert "SYS.AUTH_REQUIRED" in (await cli("--session", "f" * 32, "QueryZone")).stderr

    logout = await cli("LogOut")
    assert logout.returncode == 0, logout.stderr
    assert not session_file.exists()
    assert "SYS.AUTH_REQUIRED" in (await cli("QueryZone")).stderr


IDENTITY_TABLES = {"account", "account_session", "quota", "shared_resource"}


def test_identity_migration_matches_the_models_and_downgrades():
    """0004 (and 0014, the resource index) create exactly what schema/db/identity.py declares, and
    the downgrades remove it."""
    name = infra.unique("rs_idmig_")
    url = infra.create_database(name)
    tables = IDENTITY_TABLES | {"resource"}
    try:
        migrate.upgrade(url)
        assert infra.schema_diffs(url, tables) == []
        _downgrade(url, "0003")
        diffs = infra.schema_diffs(url, tables)
        assert {d[1].name for d in diffs if d[0] == "add_table"} == tables
        migrate.upgrade(url)
        assert infra.schema_diffs(url, tables) == []
    finally:
        infra.drop_database(name)


def _downgrade(url: str, revision: str) -> None:
    from alembic import command

    command.downgrade(migrate.alembic_config(url), revision)
