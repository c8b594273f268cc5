"""Clusters through the public API: create, update, state, delete (with its hosts), query, events."""

from __future__ import annotations

import asyncio

import pytest

from bus.errors import RingstackError, Sys

UNKNOWN = "f" * 32


async def _zone(client, name="z"):
    return (await client.api("CreateZone", {"name": name}))["inventory"]


async def _cluster(client, zone_uuid, name="c", hypervisor="Simulator"):
    body = {"zoneUuid": zone_uuid, "name": name, "hypervisorType": hypervisor}
    return (await client.api("CreateCluster", body))["inventory"]


async def test_cluster_crud_round_trip(node, client):
    zone = await _zone(client)
    created = await _cluster(client, zone["uuid"], "c1", "KVM")
    assert created["zoneUuid"] == zone["uuid"]
    assert created["hypervisorType"] == "KVM"
    assert created["state"] == "Enabled"

    found = await client.api(
        "QueryCluster", {"conditions": [{"name": "hypervisorType", "op": "=", "value": "KVM"}]}
    )
    assert [c["uuid"] for c in found["inventories"]] == [created["uuid"]]

    updated = (
        await client.api("UpdateCluster", {"uuid": created["uuid"], "name": "c1b", "description": "d"})
    )["inventory"]
    assert (updated["name"], updated["description"]) == ("c1b", "d")

    disabled = (await client.api("ChangeClusterState", {"uuid": created["uuid"], "stateEvent": "disable"}))[
        "inventory"
    ]
    assert disabled["state"] == "Disabled"
    enabled = (await client.api("ChangeClusterState", {"uuid": created["uuid"], "stateEvent": "enable"}))[
        "inventory"
    ]
    assert enabled["state"] == "Enabled"

    assert await client.api("DeleteCluster", {"uuid": created["uuid"]}) == {}
    assert (await client.api("QueryCluster", {"count": True}))["total"] == 0
    assert await client.api("DeleteCluster", {"uuid": created["uuid"]}) == {}  # a retried delete is fine


async def test_create_cluster_with_a_chosen_uuid_twice_conflicts(node, client):
    zone = await _zone(client)
    uuid = "a" * 32
    body = {"resourceUuid": uuid, "zoneUuid": zone["uuid"], "name": "c", "hypervisorType": "KVM"}
    assert (await client.api("CreateCluster", body))["inventory"]["uuid"] == uuid
    with pytest.raises(RingstackError) as err:
        await client.api("CreateCluster", body)
    assert err.value.code == Sys.CONFLICT


async def test_cluster_validation_errors_name_the_field(node, client):
    z = "a" * 32
    cases = [
        ("CreateCluster", {"name": "c", "hypervisorType": "KVM"}, "zoneUuid"),
        ("CreateCluster", {"zoneUuid": "zone-1", "name": "c", "hypervisorType": "KVM"}, "zoneUuid"),
        ("CreateCluster", {"zoneUuid": z, "hypervisorType": "KVM"}, "name"),
        ("CreateCluster", {"zoneUuid": z, "name": "", "hypervisorType": "KVM"}, "name"),
        ("CreateCluster", {"zoneUuid": z, "name": "x" * 256, "hypervisorType": "KVM"}, "name"),
        ("CreateCluster", {"zoneUuid": z, "name": "c"}, "hypervisorType"),
        ("CreateCluster", {"zoneUuid": z, "name": "c", "hypervisorType": "Xen"}, "hypervisorType"),
        (
            "CreateCluster",
            {"zoneUuid": z, "name": "c", "hypervisorType": "KVM", "description": "d" * 2049},
            "description",
        ),
        ("CreateCluster", {"zoneUuid": z, "name": "c", "hypervisorType": "KVM", "type": "zstack"}, "type"),
        ("UpdateCluster", {"uuid": "nope", "name": "c"}, "uuid"),
        ("UpdateCluster", {"uuid": z, "name": ""}, "name"),
        ("ChangeClusterState", {"uuid": z, "stateEvent": "maintain"}, "stateEvent"),
        ("DeleteCluster", {"uuid": z, "deleteMode": "Force"}, "deleteMode"),
        ("QueryCluster", {"limit": 10_001}, "limit"),
    ]
    for name, body, field in cases:
        with pytest.raises(RingstackError) as err:
            await client.api(name, body)
        assert err.value.code == Sys.INVALID_ARGUMENT, (name, body)
        assert field in [e["field"] for e in err.value.details["errors"]], (name, body, err.value.details)
    assert (await client.api("QueryCluster", {"count": True}))["total"] == 0


async def test_cluster_not_found(node, client):
    cases = [
        ("CreateCluster", {"zoneUuid": UNKNOWN, "name": "c", "hypervisorType": "KVM"}),
        ("UpdateCluster", {"uuid": UNKNOWN, "name": "x"}),
        ("ChangeClusterState", {"uuid": UNKNOWN, "stateEvent": "enable"}),
    ]
    for name, body in cases:
        with pytest.raises(RingstackError) as err:
            await client.api(name, body)
        assert err.value.code == Sys.NOT_FOUND, name
        assert UNKNOWN in err.value.message


async def test_cluster_query_by_zone_and_unknown_field(node, client):
    z1, z2 = await _zone(client, "z1"), await _zone(client, "z2")
    for i in range(3):
        await _cluster(client, z1["uuid"], f"a{i}")
    await _cluster(client, z2["uuid"], "b")
    by_zone = await client.api(
        "QueryCluster", {"conditions": [{"name": "zoneUuid", "op": "=", "value": z1["uuid"]}], "count": True}
    )
    assert by_zone["total"] == 3
    with pytest.raises(RingstackError) as err:
        await client.api("QueryCluster", {"conditions": [{"name": "password", "op": "=", "value": "x"}]})
    assert err.value.code == Sys.INVALID_ARGUMENT


async def test_cluster_events(node, client):
    received: asyncio.Queue = asyncio.Queue()

    async def on_event(env):
        received.put_nowait((env.name, env.body))

    await client.start_consumer(client.consume(client.topology.event_queue("test", "cluster.#"), on_event))
    zone = await _zone(client)
    cluster = await _cluster(client, zone["uuid"])
    await client.api("UpdateCluster", {"uuid": cluster["uuid"], "description": "d"})
    await client.api("ChangeClusterState", {"uuid": cluster["uuid"], "stateEvent": "disable"})
    await client.api(
        "ChangeClusterState", {"uuid": cluster["uuid"], "stateEvent": "disable"}
    )  # no change: no event
    await client.api("DeleteCluster", {"uuid": cluster["uuid"]})
    events = [await asyncio.wait_for(received.get(), 5) for _ in range(4)]
    assert [n for n, _ in events] == [
        "cluster.created",
        "cluster.updated",
        "cluster.state",
        "cluster.deleted",
    ]
    assert events[2][1]["inventory"]["state"] == "Disabled"
    assert received.empty()


async def test_cluster_apis_are_admin_only(node, client):
    zone = await _zone(client)
    cluster = await _cluster(client, zone["uuid"])
    user = await client.new_account("cluster-user")
    for name, body in [
        ("CreateCluster", {"zoneUuid": zone["uuid"], "name": "c", "hypervisorType": "KVM"}),
        ("UpdateCluster", {"uuid": cluster["uuid"], "name": "x"}),
        ("ChangeClusterState", {"uuid": cluster["uuid"], "stateEvent": "disable"}),
        ("DeleteCluster", {"uuid": cluster["uuid"]}),
        ("QueryCluster", {}),
    ]:
        with pytest.raises(RingstackError) as err:
            await user.api(name, body)
        assert err.value.code == Sys.PERMISSION_DENIED, name
    assert (await client.api("QueryCluster", {}))["inventories"][0]["state"] == "Enabled"
