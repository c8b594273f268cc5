"""Nested query fields across resources (``cluster.zone.name=z1``), through the public API.

Every relation is declared by the service that owns the resource and names the other resource
(``mgmt.core.query``); these tests build two zones so a wrong join shows up as a wrong answer, not
just as "something came back".
"""

from __future__ import annotations

from typing import Any

import pytest

from bus.errors import RingstackError, Sys
from tests.support.zone import SimZone, build_zone, vm_request


@pytest.fixture
async def zones(node, client, simulator, tmp_path) -> tuple[SimZone, SimZone]:
    first = await build_zone(client, tmp_path)
    second = await build_zone(client, tmp_path, cidr="10.30.0.0/22", host_ip_prefix="127.3")
    for z, name in ((first, "east"), (second, "west")):
        await client.api("UpdateZone", {"uuid": z.zone, "name": name})
        await client.api("UpdateCluster", {"uuid": z.cluster, "name": f"{name}-cluster"})
    return first, second


async def uuids(client: Any, api: str, name: str, op: str, value: Any) -> set[str]:
    reply = await client.api(api, {"conditions": [{"name": name, "op": op, "value": value}]})
    return {inv["uuid"] for inv in reply["inventories"]}


async def test_parents_children_and_link_tables_are_queryable_both_ways(zones, client) -> None:
    east, west = zones
    # child -> parent, two levels deep
    assert await uuids(client, "QueryCluster", "zone.name", "=", "east") == {east.cluster}
    assert await uuids(client, "QueryHost", "cluster.zone.name", "=", "west") == set(west.hosts)
    # parent -> children
    assert await uuids(client, "QueryZone", "host.uuid", "=", west.hosts[0]) == {west.zone}
    assert await uuids(client, "QueryZone", "cluster.name", "~=", "east%") == {east.zone}
    # many-to-many through the attachment tables, both directions
    assert await uuids(client, "QueryPrimaryStorage", "cluster.name", "=", "west-cluster") == {
        west.primary_storage
    }
    assert await uuids(client, "QueryCluster", "primaryStorage.uuid", "=", east.primary_storage) == {
        east.cluster
    }
    assert await uuids(client, "QueryCluster", "l2Network.uuid", "=", west.l2) == {west.cluster}
    assert await uuids(client, "QueryL2Network", "cluster.zone.name", "=", "east") == {east.l2}
    assert await uuids(client, "QueryBackupStorage", "zone.name", "=", "west") == {west.backup_storage}
    assert await uuids(client, "QueryImage", "backupStorage.zone.name", "=", "east") == {east.image}
    assert await uuids(client, "QueryZone", "backupStorage.uuid", "=", east.backup_storage) == {east.zone}
    # networks and their ranges
    assert await uuids(client, "QueryL3Network", "ipRanges.networkCidr", "=", "10.30.0.0/22") == {west.l3}
    assert await uuids(client, "QueryIpRange", "l3Network.l2Network.zone.name", "=", "east") == {
        inv["uuid"]
        for inv in (
            await client.api(
                "QueryIpRange", {"conditions": [{"name": "l3NetworkUuid", "op": "=", "value": east.l3}]}
            )
        )["inventories"]
    }


async def test_vms_reach_their_host_zone_offering_and_volumes(zones, client) -> None:
    east, west = zones
    a = (await client.api("CreateVmInstance", vm_request(east, "a")))["inventory"]
    b = (await client.api("CreateVmInstance", vm_request(west, "b")))["inventory"]
    assert await uuids(client, "QueryVmInstance", "host.cluster.zone.name", "=", "west") == {b["uuid"]}
    assert await uuids(client, "QueryVmInstance", "zone.name", "?=", ["east", "west"]) == {
        a["uuid"],
        b["uuid"],
    }
    assert await uuids(
        client, "QueryVmInstance", "rootVolume.primaryStorageUuid", "=", east.primary_storage
    ) == {a["uuid"]}
    assert await uuids(client, "QueryVmInstance", "vmNics.l3Network.zone.name", "=", "east") == {a["uuid"]}
    assert await uuids(client, "QueryHost", "vmInstance.name", "=", "a") == {a["hostUuid"]}
    assert await uuids(client, "QueryInstanceOffering", "vmInstance.name", "=", "b") == {west.offering}
    assert await uuids(client, "QueryVolume", "vmInstance.zone.name", "=", "west") == {
        v["uuid"] for v in b["allVolumes"]
    }
    assert await uuids(client, "QueryVmNic", "l3Network.name", "=", "l3") == {
        a["vmNics"][0]["uuid"],
        b["vmNics"][0]["uuid"],
    }
    # ``fields`` picks inventory fields that are not columns too
    picked = await client.api(
        "QueryVmInstance",
        {"conditions": [{"name": "uuid", "op": "=", "value": a["uuid"]}], "fields": ["name", "vmNics"]},
    )
    assert picked["inventories"] == [{"name": "a", "vmNics": a["vmNics"]}]
    # a condition no row meets gives nothing, not everything
    assert await uuids(client, "QueryVmInstance", "host.cluster.zone.name", "=", "north") == set()


async def test_nested_errors_name_the_whole_condition(node, client) -> None:
    for cond, needle in [
        ({"name": "cluster.zone.nme", "op": "=", "value": "x"}, "cluster.zone.nme"),
        ({"name": "cluster.nope.name", "op": "=", "value": "x"}, "cluster.nope.name"),
        ({"name": "cluster.zone.cluster.zone.cluster.name", "op": "=", "value": "x"}, "nests too deep"),
    ]:
        with pytest.raises(RingstackError) as err:
            await client.api("QueryHost", {"conditions": [cond]})
        assert err.value.code == Sys.INVALID_ARGUMENT, cond
        assert needle in err.value.message, (cond, err.value.message)
        assert err.value.details["field"] == cond["name"]
    # the listing of what can be asked names the relations too
    with pytest.raises(RingstackError) as err:
        await client.api("QueryHost", {"conditions": [{"name": "nope", "op": "=", "value": "x"}]})
    assert "cluster.*" in err.value.message and "vmInstance.*" in err.value.message
