"""LDAP login through the public API, against a real OpenLDAP server (``slapd``, started by these
tests on 127.0.0.1; see tests/support/ldap.py for its directory) and the real broker and database:
servers and their checks, bindings, ``LogInByLdap`` and what it refuses (wrong or empty passwords,
unknown and unbound users, filter and DN injection), a directory that is down or hangs, TLS,
revocation, permissions, the service password's secrecy, and the verifier seam."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from bus.errors import RingstackError, Sys
from mgmt.core import migrate
from mgmt.services.identity.errors import AUTHENTICATION_FAILED
from mgmt.services.identity.ldap import CANNOT_BIND_ADMIN, NOT_BOUND, LdapPasswordVerifier
from mgmt.services.identity.ldap_directory import (
    AMBIGUOUS_UID,
    BASE_NOT_FOUND,
    ENTRY_NOT_FOUND,
    SEARCH_FAILED,
    SERVICE_BIND_FAILED,
    TLS_FAILED,
    UNREACHABLE,
    DirectorySettings,
    authenticate,
    user_filter,
)
from schema.db.ldap import LdapServer, LdapServerSecret
from schema.db.management import Job
from tests.support import infra
from tests.support.identity import AccountClient
from tests.support.ldap import SERVICE_DN, SERVICE_PASSWORD, SUFFIX, Slapd, password_of, user_dn
from tests.support.procs import node_env, run_cli

LOCAL_PASSWORD = "local-pw-123"
TEMPLATE = f"uid={{username}},ou=people,{SUFFIX}"
LDAP_TABLES = {"ldap_server", "ldap_server_secret", "ldap_binding", "ldap_binding_session"}


@pytest.fixture(scope="module")
def slapd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slapd]:
    server = Slapd(tmp_path_factory.mktemp("slapd"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def own_slapd(tmp_path: Path) -> Iterator[Slapd]:
    """A slapd of this test's own, which it may stop or freeze."""
    server = Slapd(tmp_path / "slapd")
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def _expect(code: str, call: Any) -> RingstackError:
    with pytest.raises(RingstackError) as err:
        await call
    assert err.value.code == code, err.value
    return err.value


def _server_body(slapd: Slapd, **extra: Any) -> dict[str, Any]:
    """AddLdapServer's body: search mode with the service account; ``None`` drops a field."""
    body = {
        "name": "corp",
        "url": slapd.url,
        "base": SUFFIX,
        "username": SERVICE_DN,
        "password": SERVICE_PASSWORD,
        **extra,
    }
    return {k: v for k, v in body.items() if v is not None}


async def _add_server(client, slapd: Slapd, **extra: Any) -> dict[str, Any]:
    return (await client.api("AddLdapServer", _server_body(slapd, **extra)))["inventory"]


async def _account(client, name: str) -> str:
    body = {"name": name, "password": LOCAL_PASSWORD}
    return (await client.api("CreateAccount", body))["inventory"]["uuid"]


async def _bind(client, uid: str, account_uuid: str, **extra: Any) -> dict[str, Any]:
    body = {"ldapUid": uid, "accountUuid": account_uuid, **extra}
    return (await client.api("CreateLdapBinding", body))["inventory"]


async def _ldap_login(client, uid: str, password: str, **extra: Any) -> AccountClient:
    body = {"uid": uid, "password": password, **extra}
    inv = (await client.api("LogInByLdap", body))["inventory"]
    return AccountClient(client, inv["uuid"], inv["accountUuid"])


async def _count(client, api: str, **conditions: str) -> int:
    body = {"count": True, "conditions": [{"name": k, "op": "=", "value": v} for k, v in conditions.items()]}
    return int((await client.api(api, body))["total"])


async def _events(client, name: str, *patterns: str) -> asyncio.Queue[tuple[str, str]]:
    """(event name, resource uuid) of every event matching ``patterns`` from now on."""
    received: asyncio.Queue[tuple[str, str]] = asyncio.Queue()

    async def on_event(env):
        received.put_nowait((env.name, env.body["resourceUuid"]))

    await client.start_consumer(client.consume(client.topology.event_queue(name, *patterns), on_event))
    return received


def _settings(slapd: Slapd, **extra: Any) -> DirectorySettings:
    values: dict[str, Any] = {
        "uuid": "0" * 32,
        "name": "direct",
        "url": slapd.url,
        "base": SUFFIX,
        "username": SERVICE_DN,
        "password": SERVICE_PASSWORD,
        "encryption": "None",
        "username_property": "uid",
        "filter": None,
        "user_dn_template": None,
        "timeout": 5,
        "ca_certificate": None,
        **extra,
    }
    return DirectorySettings(**values)


# ---------------------------------------------------------------- logging in


async def test_log_in_by_ldap_gives_a_session_of_the_bound_account(node, client, slapd):
    server = await _add_server(client, slapd)
    assert (server["url"], server["base"], server["username"]) == (slapd.url, SUFFIX, SERVICE_DN)
    assert (server["encryption"], server["usernameProperty"], server["timeout"]) == ("None", "uid", 5)
    team = await _account(client, "team-a")
    binding = await _bind(client, "alice", team)
    assert binding["ldapDn"] == user_dn("alice")
    assert (binding["ldapServerUuid"], binding["accountUuid"], binding["ldapUid"]) == (
        server["uuid"],
        team,
        "alice",
    )

    alice = await _ldap_login(client, "alice", password_of("alice"))
    assert alice.account_uuid == team
    # the session is the account's, for its APIs, and no more than that (a normal account)
    assert [a["uuid"] for a in (await alice.api("QueryAccount", {}))["inventories"]] == [team]
    await alice.api("UpdateAccount", {"uuid": team, "description": "set by alice"})
    assert (await client.api("ValidateSession", {"sessionUuid": alice.session})) == {"validSession": True}
    await _expect(Sys.PERMISSION_DENIED, alice.api("CreateZone", {"name": "z"}))

    # uids match as the directory matches them (uid is case-insensitive); the binding is the entry's
    again = await _ldap_login(client, "ALICE", password_of("alice"), ldapServerUuid=server["uuid"])
    assert again.account_uuid == team and again.session != alice.session
    bindings = await client.api(
        "QueryLdapBinding", {"conditions": [{"name": "account.name", "op": "=", "value": "team-a"}]}
    )
    assert [b["uuid"] for b in bindings["inventories"]] == [binding["uuid"]]

    # LogOut ends it like any other session
    await client.api("LogOut", {"sessionUuid": alice.session})
    await _expect(Sys.AUTH_REQUIRED, alice.api("QueryAccount", {}))
    assert (await again.api("QueryAccount", {}))["inventories"]


async def test_wrong_password_unknown_user_empty_password_and_unbound_user(node, client, slapd):
    await _add_server(client, slapd)
    await _bind(client, "bob", await _account(client, "team-b"))

    wrong = await _expect(AUTHENTICATION_FAILED, _ldap_login(client, "bob", "not-bobs-password"))
    unknown = await _expect(AUTHENTICATION_FAILED, _ldap_login(client, "nobody", "whatever"))
    # one answer for both, naming neither: a caller cannot probe for uids
    assert (wrong.message, wrong.details) == (unknown.message, unknown.details)
    assert "bob" not in wrong.message and "nobody" not in unknown.message

    empty = await _expect(Sys.INVALID_ARGUMENT, _ldap_login(client, "bob", ""))
    assert [e["field"] for e in empty.details["errors"]] == ["password"]

    # carol is in the directory and her password is right, but she is bound to no account ...
    unbound = await _expect(NOT_BOUND, _ldap_login(client, "carol", password_of("carol")))
    assert "'carol'" in unbound.message and "CreateLdapBinding" in unbound.message
    # ... which only her password tells
    await _expect(AUTHENTICATION_FAILED, _ldap_login(client, "carol", "a-guess"))


async def test_an_empty_password_never_becomes_an_unauthenticated_bind(node, client, slapd):
    # The trap is armed: this slapd takes a DN with an empty password as an (anonymous) success.
    trap = slapd.whoami(user_dn("alice"), "")
    assert (trap.returncode, trap.stdout.strip()) == (0, "anonymous"), trap
    search = await _add_server(client, slapd)
    direct = await _add_server(
        client, slapd, name="direct", username=None, password=None, userDnTemplate=TEMPLATE
    )
    team = await _account(client, "team-c")
    for server in (search, direct):
        await _bind(client, "alice", team, ldapServerUuid=server["uuid"])

    verifier = LdapPasswordVerifier(node.db)
    try:
        for server in (search, direct):
            assert (await verifier.prove("alice", password_of("alice"), server["uuid"])).account.uuid == team
            await _expect(AUTHENTICATION_FAILED, verifier.prove("alice", "", server["uuid"]))
        assert await verifier.verify("alice", "") is None
    finally:
        verifier.close()
    # and below the verifier, the directory code itself never sends such a bind
    for settings in (
        _settings(slapd),
        _settings(slapd, username=None, password=None, user_dn_template=TEMPLATE),
    ):
        assert await asyncio.to_thread(authenticate, settings, "alice", password_of("alice")) == user_dn(
            "alice"
        )
        assert await asyncio.to_thread(authenticate, settings, "alice", "") is None


async def test_filter_and_dn_injection_attempts_match_nothing(node, client, slapd):
    corp = await _add_server(client, slapd, filter="(employeeType=staff)")
    direct = await _add_server(
        client, slapd, name="direct", username=None, password=None, userDnTemplate=TEMPLATE
    )
    team = await _account(client, "team-i")
    await _bind(client, "alice", team, ldapServerUuid=corp["uuid"])  # on corp only
    password = password_of("alice")

    # Unescaped, "al*" would find alice's entry alone, and her password would log it in:
    unescaped = "(&(employeeType=staff)(uid=al*))"
    assert await asyncio.to_thread(slapd.search_dns, SERVICE_DN, SERVICE_PASSWORD, unescaped) == [
        user_dn("alice")
    ]
    attempts = ["al*", "*", "*)(uid=*", "alice)(|(uid=*", "*)(employeeType=*", "alice)(uid=alice", "alice\\"]
    for uid in attempts:
        await _expect(AUTHENTICATION_FAILED, _ldap_login(client, uid, password))
    for uid in ("alice\x00", "alice\n"):  # control characters are refused outright
        await _expect(Sys.INVALID_ARGUMENT, _ldap_login(client, uid, password))
    assert user_filter(_settings(slapd, filter="(employeeType=staff)"), "*)(uid=*") == (
        r"(&(employeeType=staff)(uid=\2a\29\28uid=\2a))"
    )
    # a binding's uid is a uid too: a wildcard is a uid nobody has
    for uid in ("al*", "*)(uid=*", "*"):
        await _expect(ENTRY_NOT_FOUND, _bind(client, uid, team, ldapServerUuid=corp["uuid"]))
    # DNs built from a template escape the uid (RFC 4514): it cannot add or change components
    for uid in ("alice,ou=people", "alice+cn=Alice", "*", "alice\\,x", "alice,dc=other"):
        await _expect(
            AUTHENTICATION_FAILED, _ldap_login(client, uid, password, ldapServerUuid=direct["uuid"])
        )
    await _expect(NOT_BOUND, _ldap_login(client, "alice", password, ldapServerUuid=direct["uuid"]))


# ---------------------------------------------------------------- a directory in trouble


async def test_a_directory_that_is_down_or_hangs_gets_a_clear_error(node, client, own_slapd):
    server = await _add_server(client, own_slapd, timeout=1)
    await _bind(client, "alice", await _account(client, "team-u"))
    password = password_of("alice")
    await _ldap_login(client, "alice", password)

    own_slapd.stop()
    down = await _expect(UNREACHABLE, _ldap_login(client, "alice", password))
    assert "'corp'" in down.message and "connection refused" in down.message, down.message
    assert down.details == {"ldapServerUuid": server["uuid"]}
    assert "127.0.0.1" not in down.message and f":{own_slapd.port}" not in down.message  # a public API
    # adding a server there is refused, and nothing is stored
    await _expect(UNREACHABLE, client.api("AddLdapServer", _server_body(own_slapd, name="late")))
    assert await _count(client, "QueryLdapServer") == 1

    # a directory that accepts connections but never answers: the server's timeout bounds the wait
    own_slapd.start()
    # (well inside the client's 10 s: the reply is the directory's timeout, not SYS.TIMEOUT)
    own_slapd.pause()
    hung = await _expect(UNREACHABLE, _ldap_login(client, "alice", password))
    assert "no answer within 1 s" in hung.message, hung.message
    own_slapd.resume()
    assert (await _ldap_login(client, "alice", password)).session


# ---------------------------------------------------------------- revocation


async def test_deleting_the_binding_revokes_login_and_ends_its_sessions(node, client, slapd):
    await _add_server(client, slapd)
    team = await _account(client, "team-d")
    binding = await _bind(client, "bob", team)
    by_ldap = await _ldap_login(client, "bob", password_of("bob"))
    local = await client.login("team-d", LOCAL_PASSWORD)
    assert (await by_ldap.api("QueryAccount", {}))["inventories"]  # validated, so cached on the node
    ended = await _events(client, "ldap-sessions", "session.*.deleted")

    await client.api("DeleteLdapBinding", {"uuid": binding["uuid"]})
    await _expect(NOT_BOUND, _ldap_login(client, "bob", password_of("bob")))
    await _expect(Sys.AUTH_REQUIRED, by_ldap.api("QueryAccount", {}))
    assert (await client.api("ValidateSession", {"sessionUuid": by_ldap.session})) == {"validSession": False}
    # every node hears of it (their caches drop the session)
    assert await asyncio.wait_for(ended.get(), 5) == ("session.deleted", by_ldap.session)
    # the account's own login is not the binding's to end
    assert (await local.api("QueryAccount", {}))["inventories"]
    await client.api("DeleteLdapBinding", {"uuid": binding["uuid"]})  # again: still fine
    assert await _count(client, "QueryLdapBinding") == 0


# ---------------------------------------------------------------- permissions and secrets


async def test_only_admins_manage_ldap_servers_and_bindings(node, client, slapd):
    server = await _add_server(client, slapd)
    team = await _account(client, "team-p")
    binding = await _bind(client, "alice", team)
    normal = await client.new_account("plain", "plain-pw-123")
    by_ldap = await _ldap_login(client, "alice", password_of("alice"))
    calls = [
        ("AddLdapServer", _server_body(slapd, name="mine")),
        ("UpdateLdapServer", {"uuid": server["uuid"], "description": "mine now"}),
        ("DeleteLdapServer", {"uuid": server["uuid"], "deleteMode": "Enforcing"}),
        ("QueryLdapServer", {}),
        ("CreateLdapBinding", {"ldapUid": "bob", "accountUuid": normal.account_uuid}),
        ("DeleteLdapBinding", {"uuid": binding["uuid"]}),
        ("QueryLdapBinding", {}),
    ]
    for caller in (normal, by_ldap):
        for name, body in calls:
            err = await _expect(Sys.PERMISSION_DENIED, caller.api(name, body))
            assert "admin" in err.message
    for name, body in calls:
        await _expect(Sys.AUTH_REQUIRED, client.as_session(None).api(name, body))
    assert await _count(client, "QueryLdapServer") == 1
    assert await _count(client, "QueryLdapBinding") == 1
    inv = (await client.api("QueryLdapServer", {}))["inventories"][0]
    assert (inv["name"], inv.get("description")) == ("corp", None)
    # logging in needs no session
    body = {"uid": "alice", "password": password_of("alice")}
    assert (await client.as_session(None).api("LogInByLdap", body))["inventory"]["accountUuid"] == team


async def test_the_service_password_never_comes_back(node, client, slapd, caplog):
    caplog.set_level(logging.DEBUG)
    seen: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    async def on_event(env):
        seen.put_nowait((env.name, env.body))

    await client.start_consumer(
        client.consume(client.topology.event_queue("ldap-secrets", "ldapServer.#"), on_event)
    )
    server = await _add_server(client, slapd)
    updated = await client.api(
        "UpdateLdapServer", {"uuid": server["uuid"], "password": SERVICE_PASSWORD, "description": "re-keyed"}
    )
    queried = await client.api("QueryLdapServer", {})
    events = [await asyncio.wait_for(seen.get(), 5) for _ in range(2)]
    assert [(name, body["resourceUuid"]) for name, body in events] == [
        ("ldapServer.created", server["uuid"]),
        ("ldapServer.updated", server["uuid"]),
    ]
    assert events[1][1]["inventory"]["description"] == "re-keyed"
    ours = "\n".join(
        r.getMessage() for r in caplog.records if r.name.split(".")[0] in ("bus", "mgmt", "schema")
    )
    everything = repr([server, updated, queried, events]) + ours
    assert SERVICE_PASSWORD not in everything
    assert "password" not in repr([server, updated, queried, events]).lower()
    await _expect(
        Sys.INVALID_ARGUMENT,
        client.api(
            "QueryLdapServer", {"conditions": [{"name": "password", "op": "=", "value": SERVICE_PASSWORD}]}
        ),
    )

    engine = create_engine(node.config.database_url)
    try:
        with Session(engine) as s:
            # finished jobs keep the request, with the secret masked
            jobs = s.execute(
                select(Job.name, Job.state, Job.body).where(
                    Job.name.in_(["AddLdapServer", "UpdateLdapServer"])
                )
            ).all()
            assert sorted((name, state, body["password"]) for name, state, body in jobs) == [
                ("AddLdapServer", "succeeded", "******"),
                ("UpdateLdapServer", "succeeded", "******"),
            ]
            # and it is stored in one place only
            secret = s.get(LdapServerSecret, server["uuid"])
            assert secret is not None and secret.password == SERVICE_PASSWORD
            assert "password" not in LdapServer.__table__.c
    finally:
        engine.dispose()


# ---------------------------------------------------------------- settings, TLS, bindings


async def test_server_settings_are_checked_before_they_are_stored(node, client, slapd):
    ca, other_ca = slapd.pki.ca_pem, slapd.pki.other_ca_pem
    refused = [
        ({"password": "wrong"}, SERVICE_BIND_FAILED),
        ({"base": "dc=nowhere,dc=test"}, BASE_NOT_FOUND),
        ({"username": None, "password": None}, SEARCH_FAILED),  # anonymous clients may not search here
        ({"filter": "(&(uid=a)"}, Sys.INVALID_ARGUMENT),
        ({"filter": "uid=a"}, Sys.INVALID_ARGUMENT),
        ({"url": slapd.tls_url}, Sys.INVALID_ARGUMENT),  # ldaps:// needs encryption TLS
        ({"url": "http://127.0.0.1"}, Sys.INVALID_ARGUMENT),
        ({"password": None}, Sys.INVALID_ARGUMENT),  # a DN without a password: an unauthenticated bind
        ({"username": None}, Sys.INVALID_ARGUMENT),
        ({"userDnTemplate": f"uid=x,{SUFFIX}"}, Sys.INVALID_ARGUMENT),
        ({"userDnTemplate": TEMPLATE, "filter": "(employeeType=staff)"}, Sys.INVALID_ARGUMENT),
        ({"caCertificate": ca}, Sys.INVALID_ARGUMENT),  # with encryption None
        ({"usernameProperty": "uid)(cn=*"}, Sys.INVALID_ARGUMENT),
        ({"timeout": 0}, Sys.INVALID_ARGUMENT),
        ({"encryption": "StartTLS"}, TLS_FAILED),  # the system's trust store does not know the test CA
        ({"encryption": "StartTLS", "caCertificate": other_ca}, TLS_FAILED),
        ({"encryption": "TLS", "url": slapd.tls_url, "caCertificate": other_ca}, TLS_FAILED),
        # the certificate is for 127.0.0.1, not localhost
        (
            {
                "encryption": "TLS",
                "url": slapd.tls_url.replace("127.0.0.1", "localhost"),
                "caCertificate": ca,
            },
            TLS_FAILED,
        ),
    ]
    for extra, code in refused:
        err = await _expect(code, client.api("AddLdapServer", _server_body(slapd, **extra)))
        assert SERVICE_PASSWORD not in err.message
    assert await _count(client, "QueryLdapServer") == 0

    starttls = await _add_server(client, slapd, name="starttls", encryption="StartTLS", caCertificate=ca)
    ldaps = await _add_server(
        client, slapd, name="ldaps", url=slapd.tls_url, encryption="TLS", caCertificate=ca
    )
    team = await _account(client, "team-t")
    for server in (starttls, ldaps):
        await _bind(client, "alice", team, ldapServerUuid=server["uuid"])
        login = await _ldap_login(client, "alice", password_of("alice"), ldapServerUuid=server["uuid"])
        assert login.account_uuid == team

    # an update is checked the same way, and one refused changes nothing
    uuid = ldaps["uuid"]
    await _expect(SERVICE_BIND_FAILED, client.api("UpdateLdapServer", {"uuid": uuid, "password": "wrong"}))
    await _expect(TLS_FAILED, client.api("UpdateLdapServer", {"uuid": uuid, "caCertificate": other_ca}))
    await _expect(Sys.INVALID_ARGUMENT, client.api("UpdateLdapServer", {"uuid": uuid, "encryption": "None"}))
    await _expect(SEARCH_FAILED, client.api("UpdateLdapServer", {"uuid": uuid, "username": ""}))  # anonymous
    await _expect(
        Sys.INVALID_ARGUMENT, client.api("UpdateLdapServer", {"uuid": uuid, "username": "", "password": "x"})
    )
    await _expect(Sys.INVALID_ARGUMENT, client.api("UpdateLdapServer", {"uuid": uuid, "filter": "(x"}))
    await _expect(Sys.NOT_FOUND, client.api("UpdateLdapServer", {"uuid": "f" * 32, "name": "x"}))
    assert (
        await _ldap_login(client, "alice", password_of("alice"), ldapServerUuid=uuid)
    ).account_uuid == team
    # "" clears: StartTLS back to plain LDAP, without its CA
    plain = (
        await client.api(
            "UpdateLdapServer", {"uuid": starttls["uuid"], "encryption": "None", "caCertificate": ""}
        )
    )["inventory"]
    assert plain["encryption"] == "None" and "caCertificate" not in plain
    narrowed = (
        await client.api(
            "UpdateLdapServer", {"uuid": starttls["uuid"], "filter": "(employeeType=contractor)"}
        )
    )["inventory"]
    assert narrowed["filter"] == "(employeeType=contractor)"
    await _expect(  # alice is staff: the filter leaves her out now
        AUTHENTICATION_FAILED,
        _ldap_login(client, "alice", password_of("alice"), ldapServerUuid=starttls["uuid"]),
    )


async def test_binding_rules_and_server_deletion(node, client, slapd):
    team = await _account(client, "team-r")
    no_server = await _expect(Sys.INVALID_ARGUMENT, _bind(client, "alice", team))
    assert "no LDAP server" in no_server.message
    staff = await _add_server(client, slapd, filter="(employeeType=staff)")
    admin_uuid = client.account_uuid
    assert admin_uuid is not None
    await _expect(CANNOT_BIND_ADMIN, _bind(client, "alice", admin_uuid))
    await _expect(Sys.NOT_FOUND, _bind(client, "alice", "f" * 32))
    await _expect(ENTRY_NOT_FOUND, _bind(client, "nobody", team))
    await _expect(ENTRY_NOT_FOUND, _bind(client, "eve", team))  # a contractor: the filter leaves her out
    twin = await _bind(client, "twin", team)  # two twins, one of them staff: the filter finds one
    assert twin["ldapDn"] == user_dn("twin")
    alice = await _bind(client, "alice", team)
    other = await _account(client, "team-x")
    taken = await _expect(Sys.CONFLICT, _bind(client, "ALICE", other))  # one entry, one account, per server
    assert taken.details["bindingUuid"] == alice["uuid"]

    everyone = await _add_server(client, slapd, name="everyone")
    await _expect(Sys.INVALID_ARGUMENT, _bind(client, "bob", team))  # two servers: say which
    await _expect(AMBIGUOUS_UID, _bind(client, "twin", team, ldapServerUuid=everyone["uuid"]))
    eve_binding = await _bind(client, "eve", other, ldapServerUuid=everyone["uuid"])
    # without ldapServerUuid every server is tried: the staff one does not know eve, the other does
    eve = await _ldap_login(client, "eve", password_of("eve"))
    assert eve.account_uuid == other
    nested = {"conditions": [{"name": "ldapServer.name", "op": "=", "value": "everyone"}]}
    assert [b["ldapUid"] for b in (await client.api("QueryLdapBinding", nested))["inventories"]] == ["eve"]

    # Permissive refuses while bound; Enforcing takes the bindings, and the sessions they granted
    in_use = await _expect(Sys.RESOURCE_IN_USE, client.api("DeleteLdapServer", {"uuid": everyone["uuid"]}))
    assert in_use.details["children"] == {"ldapBinding": [eve_binding["uuid"]]}
    await client.api("DeleteLdapServer", {"uuid": everyone["uuid"], "deleteMode": "Enforcing"})
    await _expect(Sys.AUTH_REQUIRED, eve.api("QueryAccount", {}))
    assert await _count(client, "QueryLdapBinding", ldapServerUuid=everyone["uuid"]) == 0
    await client.api("DeleteLdapServer", {"uuid": everyone["uuid"]})  # again: still fine
    # deleting an account (Permissive is enough) takes its bindings with it, and says so
    gone = await _events(client, "ldap-bindings", "ldapBinding.#")
    await client.api("DeleteAccount", {"uuid": team})
    assert await _count(client, "QueryLdapBinding", ldapServerUuid=staff["uuid"]) == 0
    deleted = {await asyncio.wait_for(gone.get(), 5) for _ in range(2)}
    assert deleted == {("ldapBinding.deleted", twin["uuid"]), ("ldapBinding.deleted", alice["uuid"])}


async def test_template_mode_binds_directly(node, client, slapd):
    direct = await _add_server(
        client,
        slapd,
        username=None,
        password=None,
        userDnTemplate=TEMPLATE,
        encryption="StartTLS",
        caCertificate=slapd.pki.ca_pem,
    )
    assert direct["userDnTemplate"] == TEMPLATE and "username" not in direct
    team = await _account(client, "team-m")
    binding = await _bind(client, "bob", team)  # no service account: the template gives the DN
    assert binding["ldapDn"] == user_dn("bob")
    assert (await _ldap_login(client, "bob", password_of("bob"))).account_uuid == team
    assert (await _ldap_login(client, "BOB", password_of("bob"))).account_uuid == team
    await _expect(AUTHENTICATION_FAILED, _ldap_login(client, "bob", "nope"))
    await _expect(AUTHENTICATION_FAILED, _ldap_login(client, "nobody", "nope"))


# ---------------------------------------------------------------- the seam


async def test_the_ldap_verifier_plugs_into_log_in_by_account(node, client, slapd):
    """LDAP is a PasswordVerifier like local accounts: added to identity's chain, LogInByAccount
    takes directory credentials too, with no change to identity or the core."""
    await _add_server(client, slapd)
    team = await _account(client, "team-v")
    await _bind(client, "carol", team)
    await _expect(AUTHENTICATION_FAILED, client.login("carol", password_of("carol")))
    identity = next(s for s in node.services if s.name == "identity")
    verifier = LdapPasswordVerifier(node.db)
    identity.add_password_verifier(verifier)
    try:
        assert (await client.login("carol", password_of("carol"))).account_uuid == team
        assert (await client.login("team-v", LOCAL_PASSWORD)).account_uuid == team  # local first, as before
        await _expect(AUTHENTICATION_FAILED, client.login("carol", "wrong"))
        await _expect(AUTHENTICATION_FAILED, client.login("bob", password_of("bob")))  # bob: not bound
    finally:
        identity.verifiers.remove(verifier)
        verifier.close()


# ---------------------------------------------------------------- the migration


def test_ldap_migration_matches_the_models_and_downgrades():
    from alembic import command

    name = infra.unique("rs_ldapmig_")
    url = infra.create_database(name)
    try:
        migrate.upgrade(url, "0009")
        assert infra.schema_diffs(url, LDAP_TABLES) == []
        command.downgrade(migrate.alembic_config(url), "0008")
        assert {d[1].name for d in infra.schema_diffs(url, LDAP_TABLES) if d[0] == "add_table"} == LDAP_TABLES
        migrate.upgrade(url, "0009")
        assert infra.schema_diffs(url, LDAP_TABLES) == []
    finally:
        infra.drop_database(name)


async def test_the_cli_keeps_an_ldap_login_session_like_an_account_login(
    node, client, slapd, namespace, database_url, broker_url, tmp_path
):
    await _add_server(client, slapd)
    await _bind(client, "alice", await _account(client, "team-cli"))
    env = {**node_env(database_url, namespace, broker_url), "XDG_CONFIG_HOME": str(tmp_path)}
    env.pop("RINGSTACK_SESSION", None)
    session_file = tmp_path / "ringstack" / "session"

    login = await asyncio.to_thread(
        run_cli, ["LogInByLdap", "uid=alice", f"password={password_of('alice')}"], env
    )
    assert login.returncode == 0, login.stderr
    assert len(session_file.read_text().strip()) == 32
    listed = await asyncio.to_thread(run_cli, ["QueryAccount", "fields=name", "-f", "json"], env)
    assert listed.returncode == 0 and "team-cli" in listed.stdout, listed.stderr
