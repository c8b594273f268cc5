"""Account B plays the attacker against account A (issue #11), on a real node, broker and database.

A and B are normal accounts with the same kinds of resources (offerings, a data volume, a VM with
its NIC, root volume and IP, a security group with a rule and a member, a VIP), made from what the
admin shares publicly (image, offering, L3). B knows A's uuids, names and IPs.

``test_every_api_against_another_accounts_resources`` is generated from the API registry
(``tests/support/attacker.py`` builds the requests): for every API a normal account may call and
every uuid field it has, B sends the request naming A's resource of that kind ("victim") and the
same request naming a uuid that exists nowhere ("absent"), all other fields B's own or shared
things. Must hold, for each:

* the two answers are the same (code, message and details, the uuid aside): B cannot tell
  "exists" from "does not exist";
* the victim answer is a refusal, or a success that did nothing to A;
* none of A's rows changed (every table's rows A owns, its sharing and its resource index rows,
  compared before and after each API);
* ``resourceUuid`` (a create's caller-chosen uuid) is the documented exception: A's uuid is
  refused with exactly the answer B gets for a uuid B itself holds (``mgmt.core.resourceindex``).

Query APIs are probed on every queryable field and every relation (learnt from the API), with A's
uuids, names and IPs against values of nobody: the rows and counts must be the same.
Admin-only APIs are refused to B with ``SYS.PERMISSION_DENIED`` whatever they name.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from bus.errors import RingstackError, Sys
from schema.db.base import Base
from schema.registry import load_all
from tests.support import attacker
from tests.support.fuzz import REACHING_OUT, SABOTAGE
from tests.support.zone import GiB, SimZone, build_zone, vm_request


@dataclass
class Tenant:
    client: Any  # AccountClient
    uuid: str
    kinds: dict[str, list[str]] = field(default_factory=dict)
    names: list[str] = field(default_factory=list)
    ips: list[str] = field(default_factory=list)

    def add(self, kind: str, inv: dict[str, Any]) -> dict[str, Any]:
        self.kinds.setdefault(kind, []).append(inv["uuid"])
        if inv.get("name"):
            self.names.append(inv["name"])
        return inv

    def one(self, kind: str) -> str | None:
        found = self.kinds.get(kind)
        return found[0] if found else None


async def populate(t: Tenant, zone: SimZone, public_l3: str, tag: str) -> None:
    api = t.client.api
    t.kinds["account"] = [t.uuid]
    t.add(
        "instance_offering",
        (await api("CreateInstanceOffering", {"name": f"{tag}-io", "cpuNum": 1, "memorySize": GiB}))[
            "inventory"
        ],
    )
    disk = t.add(
        "disk_offering",
        (await api("CreateDiskOffering", {"name": f"{tag}-do", "diskSize": GiB}))["inventory"],
    )
    t.add(
        "volume",
        (await api("CreateDataVolume", {"name": f"{tag}-data", "diskOfferingUuid": disk["uuid"]}))[
            "inventory"
        ],
    )
    vm = t.add("vm_instance", (await api("CreateVmInstance", vm_request(zone, f"{tag}-vm")))["inventory"])
    for nic in vm["vmNics"]:
        t.kinds.setdefault("vm_nic", []).append(nic["uuid"])
        t.ips.append(nic["ip"])
    for volume in vm["allVolumes"]:
        t.kinds["volume"].append(volume["uuid"])
    group = t.add("security_group", (await api("CreateSecurityGroup", {"name": f"{tag}-sg"}))["inventory"])
    rules = await api(
        "AddSecurityGroupRule",
        {
            "securityGroupUuid": group["uuid"],
            "rules": [{"type": "Ingress", "protocol": "TCP", "startPort": 22, "endPort": 22}],
        },
    )
    t.kinds["security_group_rule"] = [r["uuid"] for r in rules["inventory"]["rules"]]
    await api(
        "AttachSecurityGroupToL3Network", {"securityGroupUuid": group["uuid"], "l3NetworkUuid": zone.l3}
    )
    await api(
        "AddVmNicToSecurityGroup", {"securityGroupUuid": group["uuid"], "vmNicUuids": t.kinds["vm_nic"]}
    )
    vip = t.add(
        "vip", (await api("CreateVip", {"name": f"{tag}-vip", "l3NetworkUuid": public_l3}))["inventory"]
    )
    t.ips.append(vip["ip"])
    eip_vip = (await api("CreateVip", {"name": f"{tag}-eip-vip", "l3NetworkUuid": public_l3}))["inventory"]
    t.kinds["vip"].append(eip_vip["uuid"])
    t.ips.append(eip_vip["ip"])
    t.add("eip", (await api("CreateEip", {"name": f"{tag}-eip", "vipUuid": eip_vip["uuid"]}))["inventory"])
    # A key is a broker user made with rabbitmqctl: seconds, more on a loaded machine.
    key = await api("CreateAccessKey", {"name": f"{tag}-key"}, timeout=120)
    t.add("access_key", key["inventory"])
    l3 = t.add(
        "l3_network",
        (await api("CreateL3Network", {"l2NetworkUuid": zone.l2, "name": f"{tag}-l3"}))["inventory"],
    )
    cidr = "10.50.0.0/24" if tag == "alice" else "10.60.0.0/24"
    t.add(
        "ip_range",
        (
            await api(
                "AddIpRangeByNetworkCidr",
                {"l3NetworkUuid": l3["uuid"], "name": f"{tag}-range", "networkCidr": cidr},
            )
        )["inventory"],
    )
    jobs = await api("QueryJob", {})
    t.kinds["job"] = [j["uuid"] for j in jobs["inventories"]]


@dataclass
class Arena:
    node: Any
    zone: SimZone
    a: Tenant
    b: Tenant
    shared: dict[str, str]  # kind -> what the admin shares publicly (B may use it)


@pytest.fixture
async def arena(node, client, simulator, tmp_path) -> Arena:
    zone = await build_zone(client, tmp_path)
    public_l3 = (
        await client.api(
            "CreateL3Network", {"l2NetworkUuid": zone.l2, "name": "public", "category": "Public"}
        )
    )["inventory"]["uuid"]
    await client.api(
        "AddIpRangeByNetworkCidr", {"l3NetworkUuid": public_l3, "name": "pub", "networkCidr": "10.40.0.0/24"}
    )
    public = [zone.image, zone.offering, zone.l2, zone.l3, public_l3]
    await client.api("ShareResource", {"resourceUuids": public, "toPublic": True})
    a_client = await client.new_account("alice", "alice-pw-123")
    b_client = await client.new_account("bob", "bob-pw-12345")
    a = Tenant(a_client, a_client.account_uuid)
    b = Tenant(b_client, b_client.account_uuid)
    await populate(a, zone, public_l3, "alice")
    await populate(b, zone, public_l3, "bob")
    shared = {
        "image": zone.image,
        "l3_network": zone.l3,
        "l2_network": zone.l2,
        "zone": zone.zone,
        "cluster": zone.cluster,
        "host": zone.hosts[0],
        "primary_storage": zone.primary_storage,
        "backup_storage": zone.backup_storage,
    }
    return Arena(node, zone, a, b, shared)


# ---------------------------------------------------------------- A's rows


# Columns the system itself changes after the request that made the row (a job's reply is marked
# sent once it was): not something B could have done.
SETTLING = {"job": ("replied",)}


def snapshot(session: Session, account: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row ``account`` owns, in every table (sharing and the resource index included)."""
    rows: dict[str, list[tuple[Any, ...]]] = {}
    for table in Base.metadata.sorted_tables:  # the database is at head: the models are its tables
        if "owner_account_uuid" not in table.c:
            continue
        columns = [c for c in table.c if c.name not in SETTLING.get(table.name, ())]
        found = session.execute(select(*columns).where(table.c.owner_account_uuid == account)).all()
        rows[table.name] = sorted((tuple(r) for r in found), key=repr)
    return rows


def changed(before: dict[str, list[Any]], after: dict[str, list[Any]]) -> dict[str, Any]:
    """Per table, the rows that went and the rows that came."""
    out = {}
    for table, rows in after.items():
        old, new = set(map(repr, before.get(table, []))), set(map(repr, rows))
        if old != new:
            out[table] = {"gone": sorted(old - new), "new": sorted(new - old)}
    return out


# ---------------------------------------------------------------- calls

Answer = tuple[str, Any, Any, Any]
# In fuzz.REACHING_OUT because the fuzzer may send a password; these bodies have only required fields.
SAFE_HERE = frozenset({"UpdateAccount"})
Send = Callable[[str], Awaitable[dict[str, Any]]]


def _sender(client: Any, name: str, message: Any, target: attacker.UuidField, values: dict[str, Any]) -> Send:
    """Sends ``name`` with ``target`` set to the uuid given, the other fields from ``values``."""

    def send(uuid: str) -> Awaitable[dict[str, Any]]:
        body = attacker.body(message, {**values, target.alias: [uuid] if target.is_list else uuid})
        if name in REACHING_OUT and name not in SAFE_HERE:
            # Valid, they would reach beyond the machine: sent with an unknown field, they are
            # refused at validation, for victim and absent alike.
            body[SABOTAGE] = 1
        return client.api(name, body)

    return send


def _normal(value: Any, secret: str) -> Any:
    if isinstance(value, str):
        return value.replace(secret, "<uuid>")
    if isinstance(value, dict):
        return {k: _normal(v, secret) for k, v in value.items()}
    if isinstance(value, list):
        return [_normal(v, secret) for v in value]
    return value


async def answer(send: Send, secret: str) -> Answer:
    try:
        await send(secret)
    except RingstackError as exc:
        return ("error", exc.code, _normal(exc.message, secret), _normal(exc.details, secret))
    return ("ok", None, None, None)


def normal_apis() -> list[str]:
    registry = load_all()
    return [
        n
        for n in registry.names()
        if not (registry.get(n).public or registry.get(n).internal or registry.get(n).admin_only)
        # Test services' messages are in the registry when their tests ran in this process.
        and not registry.get(n).__module__.startswith("tests.")
    ]


# ---------------------------------------------------------------- the generated suite


async def test_every_api_against_another_accounts_resources(arena: Arena) -> None:
    a, b, node = arena.a, arena.b, arena.node
    registry = load_all()
    outcomes: Counter[str] = Counter()
    failures: list[str] = []
    unknown_fields: list[str] = []
    slow: dict[str, float] = {}
    validation: list[str] = []  # refused before any handler ran (REACHING_OUT, or a value checked first)
    succeeded: list[str] = []  # victim and absent alike: B's request did nothing to A (checked)

    def own(kind: str | None) -> Any:
        if kind is None:
            return None
        return b.one(kind) or arena.shared.get(kind)

    for name in normal_apis():
        message = registry.get(name)
        assert message is not None
        if attacker.is_query(message):
            continue  # test_queries_do_not_reveal_another_accounts_rows
        fields = attacker.uuid_fields(message)
        before = await node.db.run(snapshot, a.uuid)
        started = time.monotonic()
        for target in fields:
            if target.kind is None:
                unknown_fields.append(f"{name}.{target.alias}")
                continue
            kinds = sorted(a.kinds) if target.kind == attacker.ANY_KIND else [target.kind]
            for kind in kinds:
                victim = a.one(kind)
                if victim is None:
                    continue  # A has nothing of this kind (the admin's infrastructure)
                mine = b.one(kind)
                values = {}
                for other in fields:
                    if other.alias in (target.alias, "resourceUuid"):
                        continue
                    if not other.required and other.kind == target.kind:
                        continue  # e.g. defaultL3NetworkUuid must be one of l3NetworkUuids
                    value = own(other.kind if other.kind != attacker.ANY_KIND else "vm_instance")
                    if value is not None and (
                        other.required or other.kind in b.kinds or other.kind in ("image", "l3_network")
                    ):
                        values[other.alias] = [value] if other.is_list else value

                send = _sender(b.client, name, message, target, values)
                got = await answer(send, victim)
                if got[1] == Sys.UNKNOWN_MESSAGE:
                    outcomes["unhandled (a test-only API no service of this node runs)"] += 1
                    continue
                if target.alias == "resourceUuid":
                    # The documented exception: the same refusal as for a uuid B itself holds.
                    assert mine is not None, (name, kind)
                    theirs = await answer(send, mine)
                    outcomes[f"resourceUuid:{got[1]}"] += 1
                    if got != theirs or got[1] != Sys.CONFLICT:
                        failures.append(f"{name}.resourceUuid={kind}: victim {got} vs B's own {theirs}")
                    continue
                ghost = attacker.fresh_uuid()
                absent = await answer(send, ghost)
                outcomes[f"{got[0]}:{got[1]}"] += 1
                if got[0] == "ok":
                    succeeded.append(f"{name}.{target.alias}={kind}")
                elif got[1] == Sys.INVALID_ARGUMENT:
                    validation.append(f"{name}.{target.alias}={kind}: {got[2]}")
                if got != absent:
                    failures.append(f"{name}.{target.alias}={kind}: victim {got} != absent {absent}")
        slow[name] = round(time.monotonic() - started, 2)
        after = await node.db.run(snapshot, a.uuid)
        if before != after:
            failures.append(f"{name} changed A's rows: {changed(before, after)}")

    print("attacker outcomes:", dict(outcomes))
    print("succeeded for victim and absent alike:", succeeded)
    print("refused at validation:", validation)
    print("slowest:", sorted(slow.items(), key=lambda kv: -kv[1])[:8])
    assert not failures, "\n".join(failures)
    assert not unknown_fields, f"uuid fields whose kind the suite cannot tell: {unknown_fields}"
    # The suite is only as good as what reached the handlers: most answers must be NOT_FOUND.
    assert outcomes[f"error:{Sys.NOT_FOUND}"] > 50, outcomes


async def _inventories(client: Any, name: str, conditions: list[dict[str, Any]], secret: list[str]) -> Answer:
    async def send(_: str) -> dict[str, Any]:
        reply = await client.api(name, {"conditions": conditions})
        count = await client.api(name, {"conditions": conditions, "count": True})
        return {
            "uuids": sorted(i.get("uuid", repr(i)) for i in reply["inventories"]),
            "total": count["total"],
        }

    try:
        got = await send("")
    except RingstackError as exc:
        message, details = exc.message, exc.details
        for value in secret:
            message, details = _normal(message, value), _normal(details, value)
        return ("error", exc.code, message, details)
    return ("ok", got["uuids"], got["total"], None)


async def _queryable(client: Any, name: str, prefix: str = "") -> tuple[list[str], list[str]]:
    probe = f"{prefix}noSuchField"
    try:
        await client.api(name, {"conditions": [{"name": probe, "op": "=", "value": "x"}]})
    except RingstackError as exc:
        assert exc.code == Sys.INVALID_ARGUMENT, exc
        return attacker.queryable(exc.message)
    raise AssertionError(f"{name} accepted the unknown field {probe!r}")


async def test_queries_do_not_reveal_another_accounts_rows(arena: Arena) -> None:
    """Every query API, every queryable field and every relation (two steps deep), with A's uuids,
    names and IPs against values of nobody: B gets the same rows and the same count."""
    a, b = arena.a, arena.b
    registry = load_all()
    victim = {"uuid": sorted({u for us in a.kinds.values() for u in us}), "name": a.names, "ip": a.ips}
    absent = {
        "uuid": [attacker.fresh_uuid() for _ in victim["uuid"]],
        "name": [f"nobody-{i}" for i in range(len(a.names))],
        "ip": [f"192.0.2.{i + 1}" for i in range(len(a.ips))],
    }
    failures: list[str] = []
    probes = 0
    for name in normal_apis():
        message = registry.get(name)
        assert message is not None
        if not attacker.is_query(message):
            continue
        fields, relations = await _queryable(b.client, name)
        paths = list(fields)
        for relation in relations:
            inner_fields, inner_relations = await _queryable(b.client, name, f"{relation}.")
            paths += [f"{relation}.{f}" for f in inner_fields]
            for deeper in inner_relations:
                paths += [f"{relation}.{deeper}.uuid", f"{relation}.{deeper}.name"]
        for path in paths:
            for mine, nobody in attacker.probe_values(path.rsplit(".", 1)[-1], victim, absent):
                got = await _inventories(b.client, name, [{"name": path, "op": "?=", "value": mine}], mine)
                ghost = await _inventories(
                    b.client, name, [{"name": path, "op": "?=", "value": nobody}], nobody
                )
                probes += 1
                if got[0] == "error" and got[1] == Sys.INVALID_ARGUMENT and got[:2] == ghost[:2]:
                    continue  # the field's type takes no such value (a uuid in a number field)
                if got != ghost:
                    failures.append(f"{name} {path}: A's values {got} != nobody's {ghost}")
    print(f"query probes: {probes}")
    assert not failures, "\n".join(failures)
    assert probes > 200


# ---------------------------------------------------------------- findings 1, 2 and 4, one by one


async def _error(call: Awaitable[dict[str, Any]]) -> RingstackError:
    try:
        reply = await call
    except RingstackError as exc:
        return exc
    raise AssertionError(f"expected a refusal, got {reply}")


def _vm_rows(session: Session, vm: str) -> dict[str, Any]:
    def rows(sql: str) -> list[Any]:
        return [tuple(r) for r in session.execute(text(sql), {"vm": vm})]

    return {
        "vm": rows("SELECT uuid, state, host_uuid, version FROM vm_instance WHERE uuid = :vm"),
        "nics": rows("SELECT uuid, ip FROM vm_nic WHERE vm_instance_uuid = :vm"),
        "volumes": rows("SELECT uuid, size FROM volume WHERE vm_instance_uuid = :vm"),
        "ips": rows(
            "SELECT uuid, ip FROM used_ip WHERE ip IN (SELECT ip FROM vm_nic WHERE vm_instance_uuid = :vm)"
        ),
        "hosts": rows("SELECT uuid, available_cpu, available_memory_size FROM host ORDER BY uuid"),
        "storage": rows("SELECT uuid, available_capacity FROM primary_storage ORDER BY uuid"),
    }


async def test_a_create_naming_a_taken_uuid_touches_nothing_of_its_holder(arena: Arena) -> None:
    """Finding 1: a refused create's rollback released the VM holding the uuid (any account)."""
    a, b, zone = arena.a, arena.b, arena.zone
    vm = a.one("vm_instance")
    assert vm is not None
    before = await arena.node.db.run(_vm_rows, vm)
    assert before["vm"] and before["nics"] and before["ips"] and before["volumes"]
    # A retrying its own create (the idempotent pattern), then B squatting A's VM's uuid.
    for client in (a.client, b.client):
        exc = await _error(client.api("CreateVmInstance", vm_request(zone, "again", resourceUuid=vm)))
        assert (exc.code, exc.message) == (Sys.CONFLICT, f"resource uuid {vm} is already in use")
        assert await arena.node.db.run(_vm_rows, vm) == before
    # The next VM does not get A's IP.
    other = (await b.client.api("CreateVmInstance", vm_request(zone, "next")))["inventory"]
    assert other["vmNics"][0]["ip"] not in a.ips


async def test_a_uuid_is_one_resource_of_one_kind(arena: Arena) -> None:
    """Finding 2: B created an offering under the uuid of A's VM (or account, NIC, job...), shared
    it with itself and read A's resource. Now any kind's uuid refuses any other kind's create,
    with the answer B gets for a uuid B itself holds; a deleted resource's uuid stays its owner's."""
    a, b = arena.a, arena.b
    offering = {"name": "squat", "cpuNum": 1, "memorySize": GiB}
    own = b.one("vm_instance")
    mine = await _error(b.client.api("CreateInstanceOffering", {**offering, "resourceUuid": own}))
    for kind, uuids in sorted(a.kinds.items()):
        for uuid in uuids:
            exc = await _error(b.client.api("CreateInstanceOffering", {**offering, "resourceUuid": uuid}))
            assert (exc.code, exc.message.replace(uuid, "<u>")) == (
                mine.code,
                mine.message.replace(own, "<u>"),
            ), kind
    # Nothing to share: the uuid is not B's, whatever it is.
    exc = await _error(
        b.client.api("ShareResource", {"resourceUuids": [a.one("vm_instance")], "accountUuids": [b.uuid]})
    )
    assert exc.code == Sys.NOT_FOUND and exc.details == {"kind": "resource", "uuid": a.one("vm_instance")}
    # A tombstone: A deletes its offering; B cannot take the uuid, A can.
    gone = a.one("instance_offering")
    await a.client.api("DeleteInstanceOffering", {"uuid": gone})
    exc = await _error(b.client.api("CreateInstanceOffering", {**offering, "resourceUuid": gone}))
    assert exc.code == Sys.CONFLICT
    again = await a.client.api("CreateDiskOffering", {"name": "back", "diskSize": GiB, "resourceUuid": gone})
    assert again["inventory"]["uuid"] == gone


async def test_sharing_answers_alike_for_hidden_and_absent(arena: Arena) -> None:
    """Finding 4: RevokeResourceSharing said OK for anything; ShareResource told exists from not."""
    a, b = arena.a, arena.b
    for api in ("ShareResource", "RevokeResourceSharing"):
        answers = set()
        for uuid in (a.one("vm_instance"), a.one("volume"), attacker.fresh_uuid()):
            exc = await _error(b.client.api(api, {"resourceUuids": [uuid], "accountUuids": [b.uuid]}))
            answers.add((exc.code, exc.message.replace(uuid, "<u>"), repr(_normal(exc.details, uuid))))
        assert len(answers) == 1 and next(iter(answers))[0] == Sys.NOT_FOUND, answers
    # Its owner shares and revokes (twice: revoking what is not shared is a no-op).
    vip = a.one("vip")
    await a.client.api("ShareResource", {"resourceUuids": [vip], "accountUuids": [b.uuid]})
    assert [i["uuid"] for i in (await b.client.api("QueryVip", {}))["inventories"]].count(vip) == 1
    # Shared read-only: B sees it, so B is told it may not, rather than that it is not there.
    exc = await _error(b.client.api("RevokeResourceSharing", {"resourceUuids": [vip], "all": True}))
    assert exc.code == Sys.PERMISSION_DENIED
    for _ in range(2):
        await a.client.api("RevokeResourceSharing", {"resourceUuids": [vip], "all": True})
    assert vip not in [i["uuid"] for i in (await b.client.api("QueryVip", {}))["inventories"]]


def test_every_resource_table_is_in_the_uuid_namespace(database_url: str) -> None:
    """Every table of the models with a uuid and an owner carries the resource index's trigger
    (a migration adding one must call ``resourceindex.index_table``)."""
    from sqlalchemy import create_engine

    from mgmt.core import resourceindex

    wanted = {
        t.name
        for t in Base.metadata.sorted_tables
        if {"uuid", "owner_account_uuid"} <= set(t.c.keys()) and t.name != "resource"
    }
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            assert wanted - resourceindex.indexed_tables(conn) == set()
    finally:
        engine.dispose()


async def test_admin_only_apis_are_refused_to_a_normal_account(node, client) -> None:
    registry = load_all()
    b = await client.new_account("mallory", "mallory-pw-1")
    refused = 0
    for name in registry.names():
        message = registry.get(name)
        assert message is not None
        if not message.admin_only or message.internal or message.public:
            continue
        uuids = {
            f.alias: [attacker.fresh_uuid()] if f.is_list else attacker.fresh_uuid()
            for f in attacker.uuid_fields(message)
        }
        exc = await _error(b.api(name, attacker.body(message, uuids)))
        assert exc.code in (Sys.PERMISSION_DENIED, Sys.UNKNOWN_MESSAGE), (name, exc)
        refused += exc.code == Sys.PERMISSION_DENIED
    assert refused > 40
