"""Instance and disk offerings through the public API: CRUD, validation, events, ownership."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session

from bus.errors import RingstackError, Sys
from schema.db.identity import SharedResource

UNKNOWN = "f" * 32
MiB = 1 << 20
GiB = 1 << 30
TiB = 1 << 40


async def test_instance_offering_round_trip(node, client):
    created = (
        await client.api(
            "CreateInstanceOffering",
            {
                "name": "small",
                "cpuNum": 2,
                "memorySize": 2 * GiB,
                "allocatorStrategy": "DefaultHostAllocatorStrategy",
            },
        )
    )["inventory"]
    assert (created["cpuNum"], created["memorySize"], created["type"], created["state"]) == (
        2,
        2 * GiB,
        "UserVm",
        "Enabled",
    )
    assert created["allocatorStrategy"] == "DefaultHostAllocatorStrategy"
    uuid = created["uuid"]
    updated = (
        await client.api(
            "UpdateInstanceOffering",
            {
                "uuid": uuid,
                "name": "s2",
                "description": "d",
                "allocatorStrategy": "LeastVmPreferredHostAllocatorStrategy",
            },
        )
    )["inventory"]
    assert (updated["name"], updated["description"], updated["cpuNum"]) == ("s2", "d", 2)
    assert updated["allocatorStrategy"] == "LeastVmPreferredHostAllocatorStrategy"
    state = await client.api("ChangeInstanceOfferingState", {"uuid": uuid, "stateEvent": "disable"})
    assert state["inventory"]["state"] == "Disabled"
    await client.api("CreateInstanceOffering", {"name": "big", "cpuNum": 64, "memorySize": 256 * GiB})
    found = await client.api(
        "QueryInstanceOffering",
        {"conditions": [{"name": "cpuNum", "op": ">", "value": 4}], "fields": ["name"]},
    )
    assert found["inventories"] == [{"name": "big"}]
    assert await client.api("DeleteInstanceOffering", {"uuid": uuid}) == {}
    assert await client.api("DeleteInstanceOffering", {"uuid": uuid}) == {}  # a retried delete is fine
    assert (await client.api("QueryInstanceOffering", {"count": True}))["total"] == 1


async def test_disk_offering_round_trip(node, client):
    created = (await client.api("CreateDiskOffering", {"name": "10g", "diskSize": 10 * GiB}))["inventory"]
    assert (created["diskSize"], created["state"]) == (10 * GiB, "Enabled")
    assert "allocatorStrategy" not in created
    uuid = created["uuid"]
    updated = (
        await client.api(
            "UpdateDiskOffering",
            {"uuid": uuid, "name": "ten", "allocatorStrategy": "DefaultPrimaryStorageAllocationStrategy"},
        )
    )["inventory"]
    assert (updated["name"], updated["diskSize"]) == ("ten", 10 * GiB)
    assert (await client.api("ChangeDiskOfferingState", {"uuid": uuid, "stateEvent": "disable"}))[
        "inventory"
    ]["state"] == "Disabled"
    found = await client.api(
        "QueryDiskOffering", {"conditions": [{"name": "diskSize", "op": "=", "value": 10 * GiB}]}
    )
    assert [d["uuid"] for d in found["inventories"]] == [uuid]
    await client.api("DeleteDiskOffering", {"uuid": uuid})
    assert (await client.api("QueryDiskOffering", {"count": True}))["total"] == 0


async def test_offering_validation_errors_name_the_field(node, client):
    u = "a" * 32
    inst = {"name": "o", "cpuNum": 1, "memorySize": GiB}
    cases = [
        ("CreateInstanceOffering", {**inst, "cpuNum": 0}, "cpuNum"),
        ("CreateInstanceOffering", {**inst, "cpuNum": -2}, "cpuNum"),
        ("CreateInstanceOffering", {**inst, "cpuNum": 1025}, "cpuNum"),
        ("CreateInstanceOffering", {**inst, "cpuNum": 1.5}, "cpuNum"),
        ("CreateInstanceOffering", {**inst, "memorySize": 0}, "memorySize"),
        ("CreateInstanceOffering", {**inst, "memorySize": 15 * MiB}, "memorySize"),
        ("CreateInstanceOffering", {**inst, "memorySize": 65 * TiB}, "memorySize"),
        ("CreateInstanceOffering", {"name": "o", "cpuNum": 1}, "memorySize"),
        ("CreateInstanceOffering", {**inst, "name": ""}, "name"),
        ("CreateInstanceOffering", {**inst, "allocatorStrategy": "Random"}, "allocatorStrategy"),
        ("CreateInstanceOffering", {**inst, "type": "VirtualRouter"}, "type"),
        ("UpdateInstanceOffering", {"uuid": u, "cpuNum": 4}, "cpuNum"),
        ("ChangeInstanceOfferingState", {"uuid": u, "stateEvent": "off"}, "stateEvent"),
        ("DeleteInstanceOffering", {"uuid": "1"}, "uuid"),
        ("CreateDiskOffering", {"name": "d"}, "diskSize"),
        ("CreateDiskOffering", {"name": "d", "diskSize": 0}, "diskSize"),
        ("CreateDiskOffering", {"name": "d", "diskSize": 1024}, "diskSize"),
        ("CreateDiskOffering", {"name": "d", "diskSize": 1025 * TiB}, "diskSize"),
        (
            "CreateDiskOffering",
            {"name": "d", "diskSize": GiB, "allocatorStrategy": "DefaultHostAllocatorStrategy"},
            "allocatorStrategy",
        ),
        ("UpdateDiskOffering", {"uuid": u, "diskSize": GiB}, "diskSize"),
        ("ChangeDiskOfferingState", {"uuid": u}, "stateEvent"),
        ("DeleteDiskOffering", {"uuid": u, "deleteMode": "Now"}, "deleteMode"),
        (
            "QueryDiskOffering",
            {"conditions": [{"name": "diskSize", "op": "<>", "value": 1}]},
            "conditions.0.op",
        ),
    ]
    for name, body, field in cases:
        with pytest.raises(RingstackError) as err:
            await client.api(name, body)
        assert err.value.code == Sys.INVALID_ARGUMENT, (name, body)
        assert field in [e["field"] for e in err.value.details["errors"]], (name, body, err.value.details)
    assert (await client.api("QueryInstanceOffering", {"count": True}))["total"] == 0
    assert (await client.api("QueryDiskOffering", {"count": True}))["total"] == 0
    for name, body in [
        ("UpdateInstanceOffering", {"uuid": UNKNOWN, "name": "x"}),
        ("ChangeInstanceOfferingState", {"uuid": UNKNOWN, "stateEvent": "enable"}),
        ("UpdateDiskOffering", {"uuid": UNKNOWN, "name": "x"}),
        ("ChangeDiskOfferingState", {"uuid": UNKNOWN, "stateEvent": "enable"}),
    ]:
        with pytest.raises(RingstackError) as err:
            await client.api(name, body)
        assert err.value.code == Sys.NOT_FOUND, name
    with pytest.raises(RingstackError) as err:  # a size is not a query string
        await client.api(
            "QueryDiskOffering", {"conditions": [{"name": "diskSize", "op": "=", "value": "big"}]}
        )
    assert err.value.code == Sys.INVALID_ARGUMENT


async def test_offering_events(node, client):
    received: asyncio.Queue = asyncio.Queue()

    async def on_event(env):
        received.put_nowait(env.name)

    queue = client.topology.event_queue("test", "instanceOffering.#", "diskOffering.#")
    await client.start_consumer(client.consume(queue, on_event))
    inst = (await client.api("CreateInstanceOffering", {"name": "o", "cpuNum": 1, "memorySize": GiB}))[
        "inventory"
    ]
    await client.api("UpdateInstanceOffering", {"uuid": inst["uuid"], "name": "o2"})
    await client.api("ChangeInstanceOfferingState", {"uuid": inst["uuid"], "stateEvent": "disable"})
    await client.api("DeleteInstanceOffering", {"uuid": inst["uuid"]})
    disk = (await client.api("CreateDiskOffering", {"name": "d", "diskSize": GiB}))["inventory"]
    await client.api("DeleteDiskOffering", {"uuid": disk["uuid"]})
    names = [await asyncio.wait_for(received.get(), 5) for _ in range(6)]
    assert names == [
        "instanceOffering.created",
        "instanceOffering.updated",
        "instanceOffering.state",
        "instanceOffering.deleted",
        "diskOffering.created",
        "diskOffering.deleted",
    ]


async def test_offerings_belong_to_their_account(node, client):
    alice = await client.new_account("alice")
    bob = await client.new_account("bob")
    mine = (await alice.api("CreateInstanceOffering", {"name": "a", "cpuNum": 1, "memorySize": GiB}))[
        "inventory"
    ]
    disk = (await alice.api("CreateDiskOffering", {"name": "a", "diskSize": GiB}))["inventory"]
    admins = (await client.api("CreateInstanceOffering", {"name": "std", "cpuNum": 2, "memorySize": GiB}))[
        "inventory"
    ]
    assert [o["uuid"] for o in (await alice.api("QueryInstanceOffering", {}))["inventories"]] == [
        mine["uuid"]
    ]
    assert (await bob.api("QueryInstanceOffering", {}))["inventories"] == []
    assert (await bob.api("QueryDiskOffering", {}))["inventories"] == []
    for name, body in [
        ("UpdateInstanceOffering", {"uuid": mine["uuid"], "name": "x"}),
        ("ChangeInstanceOfferingState", {"uuid": mine["uuid"], "stateEvent": "disable"}),
    ]:
        with pytest.raises(RingstackError) as err:
            await bob.api(name, body)
        assert err.value.code == Sys.NOT_FOUND, name
    # A delete of what does not exist succeeds, so one of what bob cannot see must too (doing
    # nothing), or the answer would tell the two apart (issue #11).
    await bob.api("DeleteInstanceOffering", {"uuid": mine["uuid"]})
    await bob.api("DeleteDiskOffering", {"uuid": disk["uuid"]})
    assert (await alice.api("QueryDiskOffering", {"count": True}))["total"] == 1
    assert (await alice.api("QueryInstanceOffering", {"count": True}))["total"] == 1

    # the admin shares a standard offering with everyone: usable, not changeable
    await client.api("ShareResource", {"resourceUuids": [admins["uuid"]], "toPublic": True})
    seen = {o["uuid"] for o in (await bob.api("QueryInstanceOffering", {}))["inventories"]}
    assert seen == {admins["uuid"]}
    with pytest.raises(RingstackError) as err:
        await bob.api("UpdateInstanceOffering", {"uuid": admins["uuid"], "name": "mine now"})
    assert err.value.code == Sys.PERMISSION_DENIED
    assert (await client.api("QueryInstanceOffering", {"count": True}))["total"] == 2  # admin sees all
    await alice.api("DeleteInstanceOffering", {"uuid": mine["uuid"]})
    assert (await client.api("QueryInstanceOffering", {"count": True}))["total"] == 1
    await client.api("DeleteInstanceOffering", {"uuid": admins["uuid"]})
    assert _sharing_rows(node, admins["uuid"]) == 0  # its sharing went with it


def _sharing_rows(node, uuid: str) -> int:
    engine = create_engine(node.config.database_url)
    try:
        with Session(engine) as session:
            stmt = select(func.count()).where(SharedResource.resource_uuid == uuid)
            return int(session.scalar(stmt) or 0)
    finally:
        engine.dispose()
