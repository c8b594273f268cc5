"""The query grammar, compiled to SQL, agrees with a plain Python evaluation of the same filter.

A fixed, varied set of VMs (with NICs and volumes) is written straight into a migrated database.
Hypothesis then draws ``QueryVmInstance`` bodies: 0-4 conditions over every queryable field of the
VM and of its ``vmNics.*`` / ``allVolumes.*`` relations, every operator, values of the field's type
(sometimes as strings), ``?=`` lists or comma-joined strings, LIKE patterns with and without
escaped ``%``/``_``, plus ``sortBy``/``sortDirection``/``limit``/``start``/``count``/
``replyWithCount``/``fields``. ``run_query`` (what ``QueryVmInstance`` runs) must return exactly the
uuids, in exactly the order, that the model below computes.

The model is SQL's semantics, spelt out (the compiler follows them; see the notes):

- a comparison with NULL is never true: ``description!=x``, ``description!~=x%`` and
  ``description!?=a,b`` do not return rows whose description is NULL (as in ZStack, whose query
  is SQL too); only ``=null`` finds those. The one exception is ``!?=`` with an empty list, which
  SQL (through SQLAlchemy's empty-IN) treats as true for every row, NULLs included;
- ``~=`` is PostgreSQL's LIKE: case-sensitive, ``%`` any run, ``_`` one character, and a
  backslash escapes the next character (``web\\%1`` is the literal ``web%1``);
- a nested condition (``vmNics.ip=10.0.0.5``) holds for a VM that has at least one NIC for which
  it holds: ``vmNics.ip!=10.0.0.5`` means "has a NIC whose ip is not 10.0.0.5", not "no NIC has it";
- a timestamp without an offset is read in the database session's time zone;
- ordering is the database collation's (ranked by the database itself, so the test holds under
  any collation), NULLs last ascending and first descending, then ``uuid`` ascending.

Gaps the compiler once had are pinned below as plain tests.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Final
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import DateTime, Engine, Integer, create_engine, insert, text
from sqlalchemy.orm import InstrumentedAttribute, Session

from bus.errors import RingstackError, Sys
from mgmt.core.query import QueryTarget, run_query
from mgmt.services.vm.service import VMS
from schema.api.base import parse_wire
from schema.api.vm import QueryVmInstance
from schema.db.vm import VmInstance, VmNic, Volume

# ---------------------------------------------------------------------------------------- the rows

BASE: Final = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
NAMES: Final = [
    "web-1", "web-10", "web-2", "web_1", "web%1", "Web-1", "WEB-1", "db-1", "db-01", "db_1",
    "a\\b", "a\\%b", "x", "x%", "%", "_", "", "über-1", "web-1 ", " web-1", "wéb-1",
]  # fmt: skip
DESCRIPTIONS: Final = ["", "rack A", "rack_A", "rack%A", "100% cpu", "a_b", "A_B", "\\", "web-1"]
STATES: Final = ["Running", "Stopped", "Starting", "Stopping", "Destroyed", "running"]
GiB: Final = 1 << 30


def _build_rows() -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    rng = random.Random(4)

    def uuid() -> str:
        return f"{rng.getrandbits(128):032x}"

    def maybe(pool: list[str], none_share: float = 0.3) -> str | None:
        return None if rng.random() < none_share else rng.choice(pool)

    zones, clusters, hosts, images, offerings, l3s, storages = (
        [uuid() for _ in range(n)] for n in (2, 3, 4, 3, 2, 2, 2)
    )
    stamps = [BASE + timedelta(minutes=rng.randrange(0, 600), microseconds=rng.choice([0, 1, 999999])) for _ in range(25)]
    vms: list[dict[str, Any]] = []
    nics: list[dict[str, Any]] = []
    volumes: list[dict[str, Any]] = []
    for i in range(42):
        vm_uuid = uuid()
        created = rng.choice(stamps)  # shared timestamps: ties broken by uuid
        root = uuid() if i % 7 else None
        vms.append(
            {
                "uuid": vm_uuid,
                "name": NAMES[i] if i < len(NAMES) else rng.choice(NAMES),
                "description": maybe(DESCRIPTIONS, 0.4),
                "created_at": created,
                "updated_at": created + timedelta(seconds=rng.choice([0, 1, 3600])),
                "zone_uuid": rng.choice(zones),
                "cluster_uuid": maybe(clusters),
                "host_uuid": maybe(hosts, 0.5),
                "last_host_uuid": maybe(hosts, 0.5),
                "instance_offering_uuid": maybe(offerings, 0.2),
                "image_uuid": maybe(images, 0.2),
                "root_volume_uuid": root,
                "default_l3_network_uuid": maybe(l3s),
                "hypervisor_type": rng.choice(["KVM", "Simulator"]),
                "platform": rng.choice(["Linux", "Windows", "Other"]),
                "cpu_num": rng.choice([0, 1, 1, 2, 2, 4, 8, 16]),
                "memory_size": rng.choice([0, GiB // 2, GiB, 2 * GiB, 4 * GiB, 1 << 40]),
                "state": rng.choice(STATES),
                "allocator_strategy": maybe(["DefaultHostAllocatorStrategy", "LastHostPreferredAllocatorStrategy"], 0.5),
                "owner_account_uuid": None,
                "version": 1,
            }
        )
        for device in range(rng.choice([0, 1, 1, 2, 3])):
            nics.append(
                {
                    "uuid": uuid(),
                    "vm_instance_uuid": vm_uuid,
                    "l3_network_uuid": rng.choice(l3s),
                    # a few IPs repeat across VMs, a few are NULL
                    "ip": None if rng.random() < 0.15 else f"10.0.{rng.randrange(0, 3)}.{rng.randrange(1, 30)}",
                    "netmask": maybe(["255.255.255.0", "255.255.0.0"]),
                    "gateway": maybe(["10.0.0.1", "10.0.1.1"]),
                    "mac": f"fa:16:3e:{len(nics) // 65536:02x}:{len(nics) // 256 % 256:02x}:{len(nics) % 256:02x}",
                    "device_id": device,
                    "owner_account_uuid": None,
                    "created_at": created + timedelta(seconds=device),
                    "updated_at": created,
                }
            )
        disks = ([root] if root else []) + [uuid() for _ in range(rng.choice([0, 0, 1, 2]))]
        for device, volume_uuid in enumerate(disks):
            volumes.append(_volume(rng, volume_uuid, vm_uuid, device, created, storages, images))
    for _ in range(5):  # detached data volumes: they match no VM
        volumes.append(_volume(rng, uuid(), None, None, BASE, storages, images))
    return vms, nics, volumes


def _volume(
    rng: random.Random,
    uuid: str,
    vm_uuid: str | None,
    device: int | None,
    created: datetime,
    storages: list[str],
    images: list[str],
) -> dict[str, Any]:
    root = device == 0
    return {
        "uuid": uuid,
        "name": f"{'ROOT' if root else 'DATA'}-{rng.choice(NAMES)}",
        "description": rng.choice([None, None, *DESCRIPTIONS]),
        "created_at": created,
        "updated_at": created,
        "vm_instance_uuid": vm_uuid,
        "primary_storage_uuid": rng.choice(storages),
        "disk_offering_uuid": None,
        "image_uuid": rng.choice(images) if root else None,
        "type": "Root" if root else "Data",
        "format": rng.choice(["qcow2", "raw"]),
        "size": rng.choice([GiB, 10 * GiB, 100 * GiB]),
        "install_path": rng.choice([None, f"/ps/{uuid}.qcow2"]),
        "device_id": device,
        "state": rng.choice(["Enabled", "Disabled"]),
        "status": rng.choice(["Ready", "Ready", "Creating"]),
        "host_uuid": None,
        "owner_account_uuid": None,
        "version": 1,
    }


VM_ROWS, NIC_ROWS, VOLUME_ROWS = _build_rows()
ROWS: Final[dict[type, list[dict[str, Any]]]] = {VmInstance: VM_ROWS, VmNic: NIC_ROWS, Volume: VOLUME_ROWS}
DATA_STRINGS: Final = sorted(
    {v for rows in ROWS.values() for row in rows for v in row.values() if isinstance(v, str)}
)


def kind_of(col: InstrumentedAttribute[Any]) -> str:
    col_type = col.property.columns[0].type
    if isinstance(col_type, Integer):
        return "int"
    if isinstance(col_type, DateTime):
        return "dt"
    return "str"


@dataclass(frozen=True)
class Leaf:
    path: str  # as written in the condition: "cpuNum", "vmNics.ip"
    target: QueryTarget
    name: str  # the field of ``target``

    @property
    def kind(self) -> str:
        return kind_of(self.target.fields[self.name])

    def observed(self) -> list[Any]:
        key = self.target.fields[self.name].key
        return sorted({r[key] for r in ROWS[self.target.model] if r[key] is not None}, key=repr)


# The model holds VMs with their NICs and volumes: the relations through vm_instance_uuid.
MODELED: Final = {name: VMS.relations[name].resolve(name) for name in ("vmNics", "allVolumes")}
LEAVES: Final = [Leaf(name, VMS, name) for name in sorted(VMS.fields)] + [
    Leaf(f"{rel_name}.{name}", target, name)
    for rel_name, target in sorted(MODELED.items())
    for name in sorted(target.fields)
]
SCALAR_FIELDS: Final = sorted(n for n, c in VMS.fields.items() if kind_of(c) != "dt")

# ---------------------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class Model:
    session_tz: ZoneInfo
    ranks: dict[str, int]  # the database collation's order of every string in play

    def coerce(self, kind: str, value: Any) -> Any:
        if kind == "int":
            return int(value)
        if kind == "dt":
            parsed = datetime.fromisoformat(str(value))
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=self.session_tz)
        return str(value)

    def sort_key(self, kind: str, value: Any) -> Any:
        return self.ranks[value] if kind == "str" else value

    def holds(self, target: QueryTarget, row: dict[str, Any], cond: dict[str, Any]) -> bool:
        head, dot, rest = cond["name"].partition(".")
        if dot and head in target.relations:
            rel = target.relations[head]
            inner = {**cond, "name": rest}
            matching = {c[rel.remote.key] for c in ROWS[rel.target.model] if self.holds(rel.target, c, inner)}
            local = row[rel.local.key]
            return local is not None and local in matching
        col = target.fields[cond["name"]]
        kind, op, value = kind_of(col), cond["op"], row[col.key]
        if op == "=null":
            return value is None
        if op == "!=null":
            return value is not None
        if op in ("?=", "!?="):
            raw = cond["value"]
            items = [self.coerce(kind, v) for v in (raw if isinstance(raw, list) else str(raw).split(","))]
            if op == "!?=" and not items:
                return True  # NOT IN (empty set) is true, even for NULL
            if value is None:
                return False
            return (value in items) == (op == "?=")
        if value is None:
            return False  # NULL compared with anything: not true
        if op in ("~=", "!~="):
            return (like_regex(cond["value"]).fullmatch(value) is not None) == (op == "~=")
        other = self.coerce(kind, cond["value"])
        if op == "=":
            return bool(value == other)
        if op == "!=":
            return bool(value != other)
        a, b = self.sort_key(kind, value), self.sort_key(kind, other)
        return {">": a > b, "<": a < b, ">=": a >= b, "<=": a <= b}[op]

    def run(self, body: dict[str, Any]) -> tuple[list[dict[str, Any]], int]:
        rows = [r for r in VM_ROWS if all(self.holds(VMS, r, c) for c in body.get("conditions", []))]
        rows.sort(key=lambda r: self.ranks[r["uuid"]])
        if "sortBy" in body:
            col = VMS.fields[body["sortBy"]]
            kind = kind_of(col)

            def key(r: dict[str, Any]) -> tuple[bool, Any]:
                v = r[col.key]
                return (v is None, 0 if v is None else self.sort_key(kind, v))

            # stable, so uuid ascending stays the tie-break; NULLs last asc, first desc (PostgreSQL)
            rows.sort(key=key, reverse=body.get("sortDirection") == "desc")
        start = body.get("start", 0)
        return rows[start : start + body.get("limit", 1000)], len(rows)


def like_regex(pattern: str) -> re.Pattern[str]:
    """PostgreSQL's LIKE (default escape ``\\``) as a regular expression, for ``fullmatch``."""
    out, i = [], 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\":
            i += 1
            if i == len(pattern):
                raise ValueError("LIKE pattern must not end with escape character")
            out.append(re.escape(pattern[i]))
        elif ch == "%":
            out.append(".*")
        elif ch == "_":
            out.append(".")
        else:
            out.append(re.escape(ch))
        i += 1
    return re.compile("".join(out), re.DOTALL)


def ends_with_escape(pattern: str) -> bool:
    return (len(pattern) - len(pattern.rstrip("\\"))) % 2 == 1


# ---------------------------------------------------------------------------------------- strategies

ALPHABET: Final = "abdwe-_%\\1 WÜü"
OPS: Final = ["=", "!=", ">", "<", ">=", "<=", "?=", "!?=", "~=", "!~=", "=null", "!=null"]
OFFSETS: Final = [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8)), None]
NUDGES: Final = [timedelta(0), timedelta(microseconds=1), timedelta(microseconds=-1), timedelta(seconds=30), timedelta(hours=-2)]


def render_time(at: datetime, nudge: timedelta, offset: timezone | None, zulu: bool) -> str:
    moved = at + nudge
    if offset is None:  # naive: the model reads it in the session's zone
        return moved.astimezone(UTC).replace(tzinfo=None).isoformat()
    rendered = moved.astimezone(offset).isoformat()
    return rendered.replace("+00:00", "Z") if zulu else rendered


def values(leaf: Leaf) -> st.SearchStrategy[Any]:
    seen = leaf.observed()
    if leaf.kind == "int":
        ints = st.one_of(
            *([st.sampled_from(seen)] if seen else []), st.integers(-2, 20), st.sampled_from([GiB, 1 << 40, 2**62])
        )
        return ints.flatmap(lambda n: st.sampled_from([n, str(n)]))
    if leaf.kind == "dt":
        return st.builds(
            render_time, st.sampled_from(seen), st.sampled_from(NUDGES), st.sampled_from(OFFSETS), st.booleans()
        )
    return st.one_of(*([st.sampled_from(seen)] if seen else []), st.text(ALPHABET, max_size=5))


def _escape(ch: str) -> str:
    return "\\" + ch if ch in "%_\\" else ch


@st.composite
def like_patterns(draw: st.DrawFn, leaf: Leaf) -> str:
    seen = leaf.observed()
    if bool(seen) and draw(st.booleans()):
        # derived from a stored value: keep some of it, wildcards for the rest
        s = draw(st.sampled_from(seen))
        escape = draw(st.booleans())  # unescaped: a stored % or _ acts as a wildcard
        tokens = [_escape(ch) if escape else ch for ch in s]
        if draw(st.booleans()):  # a run of it becomes %
            i = draw(st.integers(0, len(tokens)))
            tokens[i : draw(st.integers(i, len(tokens)))] = ["%"]
        for k in draw(st.sets(st.integers(0, max(0, len(tokens) - 1)), max_size=2)):
            if draw(st.booleans()):
                tokens.insert(k, "_")  # one character too many: must not match the value itself
            elif k < len(tokens) and tokens[k] != "%":
                tokens[k] = "_"
        pattern = "".join(tokens)
    else:
        piece = st.one_of(
            st.sampled_from(["%", "_", "\\%", "\\_", "\\\\", "\\a"]), st.sampled_from(ALPHABET.replace("\\", ""))
        )
        pattern = "".join(draw(st.lists(piece, max_size=6)))
    # A trailing lone backslash is a PostgreSQL error (refused, tested below): keep it literal.
    return pattern + "\\" if ends_with_escape(pattern) else pattern


@st.composite
def conditions(draw: st.DrawFn) -> dict[str, Any]:
    leaf = draw(st.sampled_from(LEAVES))
    ops = OPS if leaf.kind == "str" else [op for op in OPS if "~" not in op]  # LIKE: text only (tested below)
    op = draw(st.sampled_from(ops))
    cond: dict[str, Any] = {"name": leaf.path, "op": op}
    if op in ("=null", "!=null"):
        return cond
    if op in ("?=", "!?="):
        items = draw(st.lists(values(leaf), max_size=4))
        joinable = bool(items) and all(isinstance(v, str) and "," not in v for v in items)
        cond["value"] = ",".join(items) if joinable and draw(st.booleans()) else items
    elif "~" in op:
        cond["value"] = draw(like_patterns(leaf))
    else:
        cond["value"] = draw(values(leaf))
    return cond


@st.composite
def queries(draw: st.DrawFn) -> dict[str, Any]:
    body: dict[str, Any] = {"conditions": draw(st.lists(conditions(), max_size=4))}
    if draw(st.booleans()):
        body["sortBy"] = draw(st.sampled_from(sorted(VMS.fields)))
        body["sortDirection"] = draw(st.sampled_from(["asc", "desc"]))
    if draw(st.booleans()):
        body["limit"] = draw(st.integers(0, 45))
    if draw(st.booleans()):
        body["start"] = draw(st.integers(0, 45))
    mode = draw(st.sampled_from(["rows", "rows", "count", "replyWithCount"]))
    if mode != "rows":
        body[mode] = True
    if draw(st.integers(0, 3)) == 0:
        body["fields"] = ["uuid", *draw(st.lists(st.sampled_from(SCALAR_FIELDS), max_size=3, unique=True))]
    return body


# ---------------------------------------------------------------------------------------- fixtures


@dataclass
class World:
    engine: Engine
    session_tz: ZoneInfo

    def model(self, body: dict[str, Any]) -> Model:
        """Rank every string in play (stored and literal) by the database's own collation."""
        literals = {
            str(v)
            for c in body.get("conditions", [])
            for v in (c.get("value") if isinstance(c.get("value"), list) else [c.get("value")])
            if v is not None
        }
        with self.engine.connect() as conn:
            ordered = conn.scalars(
                text("SELECT v FROM unnest(CAST(:a AS text[])) AS t(v) GROUP BY v ORDER BY v"),
                {"a": sorted(set(DATA_STRINGS) | literals)},
            ).all()
        return Model(self.session_tz, {s: i for i, s in enumerate(ordered)})

    def query(self, body: dict[str, Any]) -> Any:
        with Session(self.engine) as session:
            return run_query(session, VMS, parse_wire(QueryVmInstance, body))


@pytest.fixture
def world(database_url: str) -> Iterator[World]:
    """The rows above in a migrated database of this test's own; examples only read them."""
    engine = create_engine(database_url)
    try:
        with engine.begin() as conn:
            conn.execute(insert(VmInstance), VM_ROWS)
            conn.execute(insert(VmNic), NIC_ROWS)
            conn.execute(insert(Volume), VOLUME_ROWS)
            session_tz = ZoneInfo(str(conn.scalar(text("SHOW TimeZone"))))
        yield World(engine, session_tz)
    finally:
        engine.dispose()


# The fixture's rows are read-only, so sharing them between examples is sound.
PROPERTY = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)

# ---------------------------------------------------------------------------------------- properties


@PROPERTY
@given(body=queries())
def test_compiled_query_agrees_with_the_python_model(world: World, body: dict[str, Any]) -> None:
    expected, total = world.model(body).run(body)
    event(f"matching rows: {'0' if total == 0 else '1-5' if total <= 5 else '6-41' if total < len(VM_ROWS) else 'all'}")
    reply = world.query(body)
    if body.get("count"):
        assert reply.inventories == []
        assert reply.total == total
        return
    assert [inv["uuid"] for inv in reply.inventories] == [r["uuid"] for r in expected]
    assert reply.total == (total if body.get("replyWithCount") else None)
    if "fields" in body:
        for inv, row in zip(reply.inventories, expected, strict=True):
            assert inv == {f: row[VMS.fields[f].key] for f in body["fields"]}
    else:  # the nested inventories are the VM's own rows, in device order
        for inv, row in zip(reply.inventories, expected, strict=True):
            nics = sorted((n for n in NIC_ROWS if n["vm_instance_uuid"] == row["uuid"]), key=lambda n: n["device_id"])
            assert [n["uuid"] for n in inv.get("vmNics", [])] == [n["uuid"] for n in nics]
            assert {v["uuid"] for v in inv.get("allVolumes", [])} == {
                v["uuid"] for v in VOLUME_ROWS if v["vm_instance_uuid"] == row["uuid"]
            }


def test_the_model_has_the_edge_cases_it_claims(world: World) -> None:
    """Hand-picked rows of the property above, so a reader sees the semantics without hypothesis."""
    names = {r["uuid"]: r["name"] for r in VM_ROWS}

    def run(*conds: tuple[Any, ...]) -> list[str]:
        body = {"conditions": [dict(zip(("name", "op", "value"), c, strict=False)) for c in conds]}
        reply = world.query(body)
        assert [i["uuid"] for i in reply.inventories] == [r["uuid"] for r in world.model(body).run(body)[0]]
        return [names[i["uuid"]] for i in reply.inventories]

    assert set(run(("name", "~=", "web\\%1"))) == {"web%1"}  # escaped: the literal %
    assert {"web-1", "web_1", "web%1"} <= set(run(("name", "~=", "web%1")))  # unescaped: a wildcard
    assert set(run(("name", "~=", "web\\_1"))) == {"web_1"}
    assert "web-1" in run(("name", "~=", "web_1"))
    assert "Web-1" not in run(("name", "~=", "web%"))  # case-sensitive
    with_null = sum(r["description"] is None for r in VM_ROWS)
    assert with_null > 0
    not_x = run(("description", "!=", "rack A"))
    assert len(not_x) == sum(r["description"] not in (None, "rack A") for r in VM_ROWS)  # NULLs excluded
    assert len(run(("description", "!?=", []))) == len(VM_ROWS)  # ... except by NOT IN ()
    assert set(run(("name", "?=", "web-1,web-2"))) == {"web-1", "web-2"}


# ---------------------------------------------------------------------------------------- errors


@st.composite
def bad_queries(draw: st.DrawFn) -> tuple[dict[str, Any], set[str]]:
    """A query that must be SYS.INVALID_ARGUMENT, and the names the error may give the field
    (a nested field is named by its full path or, as the compiler does now, by its last part)."""
    ident = st.from_regex(r"[a-z][A-Za-z0-9]{0,10}", fullmatch=True)
    leaf = draw(st.sampled_from(LEAVES))
    names = {leaf.path, leaf.name}
    how = draw(st.sampled_from(["field", "nested", "relation", "value", "in-item", "list", "missing", "sort", "fields"]))
    if how == "field":
        name = draw(ident.filter(lambda n: n not in VMS.fields))
        return {"conditions": [{"name": name, "op": "=", "value": "1"}]}, {name}
    if how == "nested":
        rel = draw(st.sampled_from(sorted(MODELED)))
        bad = draw(ident.filter(lambda n: n not in MODELED[rel].fields and n not in MODELED[rel].relation_names()))
        return {"conditions": [{"name": f"{rel}.{bad}", "op": "!=null"}]}, {f"{rel}.{bad}", bad}
    if how == "relation":
        name = f"{draw(ident.filter(lambda n: n not in VMS.relations))}.ip"
        return {"conditions": [{"name": name, "op": "=", "value": "1"}]}, {name}
    if how in ("value", "in-item"):
        leaf = draw(st.sampled_from([lf for lf in LEAVES if lf.kind != "str"]))
        names = {leaf.path, leaf.name}
        bad_values: list[Any] = (
            ["abc", "", "yesterday", "1.5e", True] if leaf.kind == "int" else ["yesterday", "", "2026-13-01", 5]
        )
        wrong = draw(st.sampled_from(bad_values))
        if how == "value":
            return {"conditions": [{"name": leaf.path, "op": draw(st.sampled_from(OPS[:6])), "value": wrong}]}, names
        good = draw(st.lists(values(leaf), max_size=2))
        return {"conditions": [{"name": leaf.path, "op": draw(st.sampled_from(["?=", "!?="])), "value": [*good, wrong]}]}, names
    if how == "list":
        op = draw(st.sampled_from([op for op in OPS if op not in ("?=", "!?=", "=null", "!=null")]))
        return {"conditions": [{"name": leaf.path, "op": op, "value": ["a", "b"]}]}, names
    if how == "missing":
        op = draw(st.sampled_from([op for op in OPS if op not in ("=null", "!=null")]))
        return {"conditions": [{"name": leaf.path, "op": op}]}, names
    name = draw(st.one_of(ident.filter(lambda n: n not in VMS.fields and n not in VMS.selectable), st.just("vmNics.ip")))
    if how == "sort":
        return {"sortBy": name}, {name}
    return {"fields": ["uuid", name]}, {name}


@settings(PROPERTY, max_examples=100)
@given(case=bad_queries())
def test_bad_queries_are_invalid_argument_naming_the_field(world: World, case: tuple[dict[str, Any], set[str]]) -> None:
    body, names = case
    with pytest.raises(RingstackError) as err:
        world.query(body)
    assert err.value.code == Sys.INVALID_ARGUMENT
    assert err.value.details.get("field") in names, err.value
    assert any(repr(n) in err.value.message for n in names), err.value.message


async def test_nested_query_errors_travel_through_the_api(node, client) -> None:
    """The same errors for nested fields, as a client sees them (top-level ones: test_zone_api.py)."""
    for cond, needle in [
        ({"name": "vmNics.nope", "op": "=", "value": "1"}, "nope"),
        ({"name": "nope.ip", "op": "=", "value": "1"}, "nope.ip"),
        ({"name": "allVolumes.size", "op": ">", "value": "big"}, "size"),
        ({"name": "vmNics.deviceId", "op": "?=", "value": ["0", "x"]}, "deviceId"),
        ({"name": "vmNics.ip", "op": "=", "value": ["a", "b"]}, "ip"),
        ({"name": "cpuNum", "op": "<="}, "cpuNum"),
    ]:
        with pytest.raises(RingstackError) as err:
            await client.api("QueryVmInstance", {"conditions": [cond]})
        assert err.value.code == Sys.INVALID_ARGUMENT, cond
        assert repr(needle) in err.value.message, (cond, err.value.message)
    with pytest.raises(RingstackError) as err:
        await client.api("QueryVmInstance", {"sortBy": "vmNics.ip"})  # sorting is on the VM's own fields
    assert err.value.code == Sys.INVALID_ARGUMENT


# ---------------------------------------------------------------------------------------- known gaps


@pytest.mark.filterwarnings("ignore::sqlalchemy.exc.SADeprecationWarning")  # LIKE on a non-string type
@pytest.mark.parametrize("field", ["cpuNum", "createdAt", "vmNics.deviceId"])
def test_like_on_a_non_text_field_is_invalid_argument(world: World, field: str) -> None:
    with pytest.raises(RingstackError) as err:
        world.query({"conditions": [{"name": field, "op": "~=", "value": "1%"}]})
    assert err.value.code == Sys.INVALID_ARGUMENT


def test_like_pattern_ending_in_the_escape_is_invalid_argument(world: World) -> None:
    with pytest.raises(RingstackError) as err:  # description has no index: every row is matched
        world.query({"conditions": [{"name": "description", "op": "~=", "value": "rack\\"}]})
    assert err.value.code == Sys.INVALID_ARGUMENT


def test_a_fraction_for_an_integer_field_is_invalid_argument(world: World) -> None:
    with pytest.raises(RingstackError) as err:
        world.query({"conditions": [{"name": "cpuNum", "op": "=", "value": 2.5}]})
    assert err.value.code == Sys.INVALID_ARGUMENT
