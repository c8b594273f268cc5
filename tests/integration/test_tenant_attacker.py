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

from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy import MetaData, Table, select
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
    public = [zone.image, zone.offering, zone.l3, public_l3]
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
    metadata = MetaData()
    for model_table in Base.metadata.sorted_tables:
        if "owner_account_uuid" not in model_table.c:
            continue
        table = Table(model_table.name, metadata, autoload_with=session.connection())
        columns = [c for c in table.c if c.name not in SETTLING.get(table.name, ())]
        found = session.execute(select(*columns).where(table.c.owner_account_uuid == account)).all()
        rows[model_table.name] = sorted((tuple(r) for r in found), key=repr)
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
Send = Callable[[str], Awaitable[dict[str, Any]]]


def _sender(client: Any, name: str, message: Any, target: attacker.UuidField, values: dict[str, Any]) -> Send:
    """Sends ``name`` with ``target`` set to the uuid given, the other fields from ``values``."""

    def send(uuid: str) -> Awaitable[dict[str, Any]]:
        body = attacker.body(message, {**values, target.alias: [uuid] if target.is_list else uuid})
        if name in REACHING_OUT:
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
    ]


# ---------------------------------------------------------------- the generated suite


async def test_every_api_against_another_accounts_resources(arena: Arena) -> None:
    a, b, node = arena.a, arena.b, arena.node
    registry = load_all()
    outcomes: Counter[str] = Counter()
    failures: list[str] = []
    unknown_fields: list[str] = []
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
                if got != absent:
                    failures.append(f"{name}.{target.alias}={kind}: victim {got} != absent {absent}")
        after = await node.db.run(snapshot, a.uuid)
        if before != after:
            failures.append(f"{name} changed A's rows: {changed(before, after)}")

    print("attacker outcomes:", dict(outcomes))
    print("succeeded for victim and absent alike:", succeeded)
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
