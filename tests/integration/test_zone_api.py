"""Zones through the public API: a client over RabbitMQ to a node, into PostgreSQL and back."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from bus.errors import RingstackError, Sys


async def test_zone_crud_round_trip(node, client):
    created = (await client.api("CreateZone", {"name": "z1", "description": "first"}))["inventory"]
    assert created["name"] == "z1"
    assert created["description"] == "first"
    assert created["state"] == "Enabled"
    assert len(created["uuid"]) == 32

    found = await client.api("QueryZone", {"conditions": [{"name": "name", "op": "=", "value": "z1"}]})
    assert [z["uuid"] for z in found["inventories"]] == [created["uuid"]]

    updated = (await client.api("UpdateZone", {"uuid": created["uuid"], "name": "z1b"}))["inventory"]
    assert updated["name"] == "z1b"
    assert updated["description"] == "first"

    disabled = (await client.api("ChangeZoneState", {"uuid": created["uuid"], "stateEvent": "disable"}))[
        "inventory"
    ]
    assert disabled["state"] == "Disabled"

    assert await client.api("DeleteZone", {"uuid": created["uuid"]}) == {}
    assert (await client.api("QueryZone", {}))["inventories"] == []
    # deleting again succeeds, so a retried delete is safe
    assert await client.api("DeleteZone", {"uuid": created["uuid"]}) == {}


@pytest.mark.parametrize(
    ("name", "body", "field"),
    [
        ("CreateZone", {}, "name"),
        ("CreateZone", {"name": ""}, "name"),
        ("CreateZone", {"name": "x" * 256}, "name"),
        ("CreateZone", {"name": 5}, "name"),
        ("CreateZone", {"name": "z", "description": "d" * 2049}, "description"),
        ("CreateZone", {"name": "z", "bogus": 1}, "bogus"),
        ("CreateZone", {"name": "z", "owner_account_uuid": "x"}, "owner_account_uuid"),
        ("UpdateZone", {"name": "z"}, "uuid"),
        ("UpdateZone", {"uuid": "not-a-uuid"}, "uuid"),
        ("ChangeZoneState", {"uuid": "a" * 32, "stateEvent": "explode"}, "stateEvent"),
        ("ChangeZoneState", {"uuid": "a" * 32, "state_event": "enable"}, "state_event"),
        ("DeleteZone", {"uuid": "a" * 32, "deleteMode": "Sometimes"}, "deleteMode"),
        ("QueryZone", {"limit": -1}, "limit"),
        ("QueryZone", {"conditions": [{"name": "name", "op": "=~"}]}, "conditions.0.op"),
        ("QueryZone", {"sortDirection": "up"}, "sortDirection"),
    ],
)
async def test_zone_validation_errors_name_the_field(node, client, name, body, field):
    with pytest.raises(RingstackError) as err:
        await client.api(name, body)
    assert err.value.code == Sys.INVALID_ARGUMENT
    assert field in [e["field"] for e in err.value.details["errors"]]
    assert (await client.api("QueryZone", {"count": True}))["total"] == 0  # nothing was created


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"conditions": [{"name": "nope", "op": "=", "value": "1"}]}, "nope"),
        ({"sortBy": "nope"}, "nope"),
        ({"fields": ["uuid", "nope"]}, "nope"),
        ({"conditions": [{"name": "createdAt", "op": ">", "value": "yesterday"}]}, "createdAt"),
        ({"conditions": [{"name": "name", "op": "="}]}, "name"),
        ({"conditions": [{"name": "name", "op": "=", "value": ["a", "b"]}]}, "name"),
    ],
)
async def test_zone_query_errors_name_the_field(node, client, body, needle):
    with pytest.raises(RingstackError) as err:
        await client.api("QueryZone", body)
    assert err.value.code == Sys.INVALID_ARGUMENT
    assert needle in err.value.message


async def test_zone_not_found(node, client):
    for name, body in [
        ("UpdateZone", {"uuid": "f" * 32, "name": "x"}),
        ("ChangeZoneState", {"uuid": "f" * 32, "stateEvent": "enable"}),
    ]:
        with pytest.raises(RingstackError) as err:
            await client.api(name, body)
        assert err.value.code == Sys.NOT_FOUND


async def test_zone_query_operators_paging_and_count(node, client):
    for i in range(7):
        await client.api("CreateZone", {"name": f"zone-{i}", "description": "odd" if i % 2 else None})
    q = lambda *conds, **extra: client.api(  # noqa: E731
        "QueryZone",
        {"conditions": [dict(zip(("name", "op", "value"), c, strict=False)) for c in conds], **extra},
    )
    assert len((await q(("name", "~=", "zone-%")))["inventories"]) == 7
    assert [
        z["name"] for z in (await q(("name", "?=", ["zone-1", "zone-3"]), sortBy="name"))["inventories"]
    ] == [
        "zone-1",
        "zone-3",
    ]
    assert len((await q(("name", "!?=", ["zone-1", "zone-3"])))["inventories"]) == 5
    assert len((await q(("description", "=null")))["inventories"]) == 4
    assert len((await q(("description", "!=null")))["inventories"]) == 3
    assert len((await q(("name", "!=", "zone-0")))["inventories"]) == 6
    assert len((await q(("name", "!~=", "zone-1%")))["inventories"]) == 6
    page = await q(sortBy="name", sortDirection="desc", limit=2, start=1, replyWithCount=True)
    assert [z["name"] for z in page["inventories"]] == ["zone-5", "zone-4"]
    assert page["total"] == 7
    only = await q(("name", "=", "zone-2"), fields=["name"])
    assert only["inventories"] == [{"name": "zone-2"}]
    assert (await q(count=True)) == {"inventories": [], "total": 7}


async def test_zone_events_are_published(node, client, namespace):
    """Create/update/delete publish zone.<uuid>.<action> on the events exchange."""
    received: asyncio.Queue = asyncio.Queue()

    async def on_event(env):
        received.put_nowait((env.name, env.body))

    consumer = client.consume(client.topology.event_queue("test", "zone.#"), on_event)
    await client.start_consumer(consumer)
    zone = (await client.api("CreateZone", {"name": "ev"}))["inventory"]
    await client.api("UpdateZone", {"uuid": zone["uuid"], "description": "d"})
    await client.api("DeleteZone", {"uuid": zone["uuid"]})
    events = [await asyncio.wait_for(received.get(), 5) for _ in range(3)]
    assert [name for name, _ in events] == ["zone.created", "zone.updated", "zone.deleted"]
    assert all(body["resourceUuid"] == zone["uuid"] for _, body in events)
    assert events[1][1]["inventory"]["description"] == "d"
    assert orjson.dumps(events)  # bodies are plain JSON


async def test_concurrent_updates_of_one_zone_are_serialised(node, client):
    """Per-resource serial queue: 20 concurrent renames all succeed (no CONFLICT) in some order."""
    zone = (await client.api("CreateZone", {"name": "z"}))["inventory"]
    results = await asyncio.gather(
        *(client.api("UpdateZone", {"uuid": zone["uuid"], "description": f"d{i}"}) for i in range(20))
    )
    assert len(results) == 20
    final = await client.api(
        "QueryZone", {"conditions": [{"name": "uuid", "op": "=", "value": zone["uuid"]}]}
    )
    assert final["inventories"][0]["description"] in {f"d{i}" for i in range(20)}
