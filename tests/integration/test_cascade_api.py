"""Deletion cascades through the public API: Permissive refuses naming the children, Enforcing
removes the whole tree (zone -> clusters -> hosts, primary storage and its attachments, backup
storage attachments, images whose only copy was on a deleted backup storage), all in one
transaction that a failure anywhere rolls back."""

from __future__ import annotations

import asyncio
import os

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from bus.errors import RingstackError, Sys
from mgmt.core.cascade import CascadeRule
from schema.db.host import Host
from schema.db.storage import PrimaryStorageClusterRef

GiB = 1 << 30


@pytest.fixture(autouse=True)
def _simulator_serves_the_hosts(simulator):
    """Simulator hosts connect to a simulator; one runs in every test of this module."""


async def _tree(client, tmp_path):
    """A zone with two clusters, three hosts, a primary storage on both clusters, and a backup
    storage attached to it and to a second zone."""
    zone = (await client.api("CreateZone", {"name": "z"}))["inventory"]
    other = (await client.api("CreateZone", {"name": "other"}))["inventory"]
    clusters = [
        (
            await client.api(
                "CreateCluster", {"zoneUuid": zone["uuid"], "name": f"c{i}", "hypervisorType": "Simulator"}
            )
        )["inventory"]
        for i in range(2)
    ]
    hosts = []
    for i, cluster in enumerate([clusters[0], clusters[0], clusters[1]]):
        body = {
            "clusterUuid": cluster["uuid"],
            "name": f"h{i}",
            "managementIp": f"10.1.0.{i + 1}",
            "totalCpu": 4,
            "totalMemorySize": 8 * GiB,
        }
        hosts.append((await client.api("AddSimulatorHost", body))["inventory"])
    ps = (
        await client.api(
            "AddLocalPrimaryStorage",
            {"zoneUuid": zone["uuid"], "name": "ps", "url": "/var/lib/ps", "totalCapacity": 100 * GiB},
        )
    )["inventory"]
    for cluster in clusters:
        await client.api(
            "AttachPrimaryStorageToCluster",
            {"primaryStorageUuid": ps["uuid"], "clusterUuid": cluster["uuid"]},
        )
    bs = (await client.api("AddLocalDirBackupStorage", {"name": "bs", "url": str(tmp_path / "bs")}))[
        "inventory"
    ]
    for z in (zone, other):
        await client.api(
            "AttachBackupStorageToZone", {"backupStorageUuid": bs["uuid"], "zoneUuid": z["uuid"]}
        )
    return zone, other, clusters, hosts, ps, bs


async def _count(client, query):
    return (await client.api(query, {"count": True}))["total"]


async def test_zone_delete_permissive_refuses_enforcing_removes_the_tree(node, client, tmp_path):
    zone, other, clusters, _, ps, bs = await _tree(client, tmp_path)
    with pytest.raises(RingstackError) as err:
        await client.api("DeleteZone", {"uuid": zone["uuid"]})
    assert err.value.code == Sys.RESOURCE_IN_USE
    children = err.value.details["children"]
    assert sorted(children["cluster"]) == sorted(c["uuid"] for c in clusters)
    assert children["primaryStorage"] == [ps["uuid"]]
    assert "backupStorageZoneRef" not in children  # an attachment vetoes nothing
    assert await _count(client, "QueryHost") == 3

    received: asyncio.Queue = asyncio.Queue()

    async def on_event(env):
        received.put_nowait(env.name)

    await client.start_consumer(client.consume(client.topology.event_queue("test", "*.*.deleted"), on_event))
    await client.api("DeleteZone", {"uuid": zone["uuid"], "deleteMode": "Enforcing"})
    for query in ("QueryZone", "QueryCluster", "QueryHost", "QueryPrimaryStorage"):
        assert await _count(client, query) == (1 if query == "QueryZone" else 0), query
    left = (await client.api("QueryBackupStorage", {}))["inventories"]
    assert [(b["uuid"], b["attachedZoneUuids"]) for b in left] == [(bs["uuid"], [other["uuid"]])]
    names = sorted([await asyncio.wait_for(received.get(), 5) for _ in range(7)])
    assert names == sorted(
        ["host.deleted"] * 3 + ["cluster.deleted"] * 2 + ["primaryStorage.deleted", "zone.deleted"]
    )


async def test_cluster_delete_detaches_storage_and_takes_hosts_only_when_enforcing(node, client, tmp_path):
    zone, _, clusters, hosts, ps, _ = await _tree(client, tmp_path)
    with pytest.raises(RingstackError) as err:
        await client.api("DeleteCluster", {"uuid": clusters[0]["uuid"]})
    assert err.value.code == Sys.RESOURCE_IN_USE
    assert sorted(err.value.details["children"]["host"]) == sorted(h["uuid"] for h in hosts[:2])
    assert "primaryStorageClusterRef" not in err.value.details["children"]

    await client.api("DeleteHost", {"uuid": hosts[2]["uuid"]})
    await client.api(
        "DeleteCluster", {"uuid": clusters[1]["uuid"]}
    )  # Permissive: no host left, storage detached
    after = (await client.api("QueryPrimaryStorage", {}))["inventories"][0]
    assert after["attachedClusterUuids"] == [clusters[0]["uuid"]]

    await client.api("DeleteCluster", {"uuid": clusters[0]["uuid"], "deleteMode": "Enforcing"})
    assert await _count(client, "QueryHost") == 0
    assert await _count(client, "QueryCluster") == 0
    after = (await client.api("QueryPrimaryStorage", {}))["inventories"][0]
    assert after["attachedClusterUuids"] == []  # the storage itself belongs to the zone: it stays
    await client.api("DeletePrimaryStorage", {"uuid": ps["uuid"]})  # detached: Permissive is enough
    await client.api("DeleteZone", {"uuid": zone["uuid"]})
    assert await _count(client, "QueryZone") == 1


async def test_backup_storage_delete_and_its_images(node, client, tmp_path):
    source = tmp_path / "disk.raw"
    source.write_bytes(os.urandom(50_000))
    bs1 = (await client.api("AddLocalDirBackupStorage", {"name": "b1", "url": str(tmp_path / "b1")}))[
        "inventory"
    ]
    bs2 = (await client.api("AddLocalDirBackupStorage", {"name": "b2", "url": str(tmp_path / "b2")}))[
        "inventory"
    ]

    async def add(name, bs_uuids):
        body = {"name": name, "url": f"file://{source}", "format": "raw", "backupStorageUuids": bs_uuids}
        return (await client.api("AddImage", body, timeout=30))["inventory"]

    only_here = await add("only-here", [bs1["uuid"]])
    elsewhere_too = await add("elsewhere-too", [bs1["uuid"], bs2["uuid"]])

    with pytest.raises(RingstackError) as err:
        await client.api("DeleteBackupStorage", {"uuid": bs1["uuid"]})
    assert err.value.code == Sys.RESOURCE_IN_USE
    assert err.value.details["children"] == {"image": [only_here["uuid"]]}  # it would be lost

    await client.api("DeleteBackupStorage", {"uuid": bs1["uuid"], "deleteMode": "Enforcing"})
    images = {i["name"]: i for i in (await client.api("QueryImage", {}))["inventories"]}
    assert set(images) == {"elsewhere-too"}
    assert [r["backupStorageUuid"] for r in images["elsewhere-too"]["backupStorageRefs"]] == [bs2["uuid"]]
    assert images["elsewhere-too"]["status"] == "Ready"
    assert elsewhere_too["uuid"] == images["elsewhere-too"]["uuid"]

    # now bs2 holds that image's only copy: Permissive refuses it as well
    with pytest.raises(RingstackError) as err:
        await client.api("DeleteBackupStorage", {"uuid": bs2["uuid"]})
    assert err.value.details["children"] == {"image": [elsewhere_too["uuid"]]}


async def test_a_failing_cascade_rolls_everything_back(node, client, tmp_path):
    """A rule that fails after the hosts and the storage attachments were already deleted in the
    same transaction: the error reaches the caller and nothing at all was deleted."""
    zone, other, clusters, _, _, _ = await _tree(client, tmp_path)
    seen_inside: list[tuple[int, int]] = []

    def children_of(session: Session, parent_kind: str, uuids) -> list[str]:
        return [f"bomb-under-{u}" for u in uuids]

    def explode(session: Session, uuids) -> None:
        # registered last, so it runs after the host and attachment rules of the same clusters
        hosts = session.scalar(select(func.count()).select_from(Host))
        refs = session.scalar(select(func.count()).select_from(PrimaryStorageClusterRef))
        seen_inside.append((hosts, refs))
        raise RingstackError("TEST.EXPLODED", "a cascade rule failed midway")

    node.cascade.register(CascadeRule("testBomb", ("cluster",), children_of, explode))
    try:
        with pytest.raises(RingstackError) as err:
            await client.api("DeleteZone", {"uuid": zone["uuid"], "deleteMode": "Enforcing"})
        assert err.value.code == "TEST.EXPLODED"
        assert seen_inside == [(0, 0)]  # the cascade really was midway: hosts and attachments gone
    finally:
        node.cascade.unregister("testBomb")

    assert await _count(client, "QueryZone") == 2
    assert await _count(client, "QueryCluster") == 2
    assert await _count(client, "QueryHost") == 3
    storage = (await client.api("QueryPrimaryStorage", {}))["inventories"][0]
    assert sorted(storage["attachedClusterUuids"]) == sorted(c["uuid"] for c in clusters)
    backup = (await client.api("QueryBackupStorage", {}))["inventories"][0]
    assert sorted(backup["attachedZoneUuids"]) == sorted([zone["uuid"], other["uuid"]])

    await client.api("DeleteZone", {"uuid": zone["uuid"], "deleteMode": "Enforcing"})  # now it goes
    assert await _count(client, "QueryHost") == 0
