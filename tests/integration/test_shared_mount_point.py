"""SharedMountPoint primary storage through the public API: a directory the operator mounted at the
same path on every host of a cluster. It is added, accounted for and used like local storage, but
its VMs can migrate; MigrateVm prepares the destination (the NICs' bridges) first, tells the source's
agent the storage is shared, and a destination that cannot make a bridge leaves the VM where it was."""

from __future__ import annotations

from typing import Any

import pytest

from agents.simulator.simulator import Fault
from bus.errors import RingstackError, Sys
from schema.agent import MigrateVmCommand
from tests.support.zone import GiB, build_zone, vm_request

MOUNT = "/mnt/cluster-fs/ringstack"


async def _smp(client: Any, zone: str, url: str = MOUNT, total: int = 100 * GiB) -> dict:
    body = {"zoneUuid": zone, "name": "smp", "url": url, "totalCapacity": total}
    return (await client.api("AddSharedMountPointPrimaryStorage", body))["inventory"]


async def _hosts(client: Any) -> dict[str, dict]:
    return {h["uuid"]: h for h in (await client.api("QueryHost", {}))["inventories"]}


async def _ps(client: Any, uuid: str) -> dict:
    found = await client.api(
        "QueryPrimaryStorage", {"conditions": [{"name": "uuid", "op": "=", "value": uuid}]}
    )
    (ps,) = found["inventories"]
    return ps


async def test_add_query_attach_and_refuse_a_bad_or_taken_directory(node, client):
    zone = (await client.api("CreateZone", {"name": "z"}))["inventory"]["uuid"]
    cluster = (
        await client.api("CreateCluster", {"zoneUuid": zone, "name": "c", "hypervisorType": "Simulator"})
    )["inventory"]["uuid"]
    ps = await _smp(client, zone, url=MOUNT + "/")
    assert (ps["type"], ps["url"], ps["state"], ps["status"]) == (
        "SharedMountPoint",
        MOUNT,
        "Enabled",
        "Connected",
    )
    assert (ps["totalCapacity"], ps["availableCapacity"]) == (100 * GiB, 100 * GiB)

    with pytest.raises(RingstackError) as taken:
        await _smp(client, zone)
    assert taken.value.code == "STORAGE.URL_IN_USE" and taken.value.details["uuid"] == ps["uuid"]
    for url in ("relative/dir", "/a/../b", ""):
        with pytest.raises(RingstackError) as bad:
            await _smp(client, zone, url=url)
        assert bad.value.code == Sys.INVALID_ARGUMENT, url
    with pytest.raises(RingstackError) as no_size:
        await client.api("AddSharedMountPointPrimaryStorage", {"zoneUuid": zone, "name": "x", "url": "/x"})
    assert no_size.value.code == Sys.INVALID_ARGUMENT

    attached = (
        await client.api(
            "AttachPrimaryStorageToCluster", {"primaryStorageUuid": ps["uuid"], "clusterUuid": cluster}
        )
    )["inventory"]
    assert attached["attachedClusterUuids"] == [cluster]
    found = await client.api(
        "QueryPrimaryStorage", {"conditions": [{"name": "type", "op": "=", "value": "SharedMountPoint"}]}
    )
    assert [p["uuid"] for p in found["inventories"]] == [ps["uuid"]]


@pytest.fixture
async def zone(node, client, simulator, tmp_path):
    z = await build_zone(client, tmp_path, hosts=3)
    z.extra["smp"] = (await _smp(client, z.zone))["uuid"]
    await client.api(
        "AttachPrimaryStorageToCluster", {"primaryStorageUuid": z.extra["smp"], "clusterUuid": z.cluster}
    )
    return z


def record_migrations(simulator: Any, host_uuid: str) -> list[MigrateVmCommand]:
    """The MigrateVmCommands the simulated host receives (it still runs them)."""
    host = simulator.hosts[host_uuid]
    seen: list[MigrateVmCommand] = []
    original = host.vm_migrate

    async def vm_migrate(cmd: MigrateVmCommand) -> Any:
        seen.append(cmd)
        return await original(cmd)

    host.vm_migrate = vm_migrate
    return seen


async def test_a_vm_on_it_migrates_with_its_destination_prepared_and_its_storage_declared_shared(
    zone, client, simulator
):
    smp = zone.extra["smp"]
    vm = (await client.api("CreateVmInstance", vm_request(zone, primaryStorageUuidForRootVolume=smp)))[
        "inventory"
    ]
    (root,) = vm["allVolumes"]
    assert root["primaryStorageUuid"] == smp and root["installPath"].startswith(f"{MOUNT}/")
    assert (await _ps(client, smp))["availableCapacity"] == 100 * GiB - root["size"]

    source = vm["hostUuid"]
    candidates = await client.api("GetVmMigrationCandidateHosts", {"vmInstanceUuid": vm["uuid"]})
    assert {h["uuid"] for h in candidates["inventories"]} == set(zone.hosts) - {source}
    target = candidates["inventories"][0]["uuid"]
    sent = record_migrations(simulator, source)
    bridge = next(iter(simulator.hosts[source].bridges))
    assert bridge not in simulator.hosts[target].bridges

    moved = (await client.api("MigrateVm", {"vmInstanceUuid": vm["uuid"], "hostUuid": target}))["inventory"]
    assert (moved["hostUuid"], moved["state"]) == (target, "Running")
    assert vm["uuid"] in simulator.hosts[target].vms and vm["uuid"] not in simulator.hosts[source].vms
    assert bridge in simulator.hosts[target].bridges  # made there before the migration
    hosts = await _hosts(client)
    (command,) = sent
    assert command.storage_shared is True
    assert command.destination_uri == f"qemu+tcp://{hosts[target]['managementIp']}/system"
    assert (hosts[source]["availableCpu"], hosts[target]["availableCpu"]) == (8, 7)
    assert (hosts[source]["availableMemorySize"], hosts[target]["availableMemorySize"]) == (
        16 * GiB,
        15 * GiB,
    )
    assert (await _ps(client, smp))["availableCapacity"] == 100 * GiB - root["size"]  # the disk did not move


async def test_a_destination_that_cannot_make_the_bridge_leaves_the_vm_running_where_it_was(
    zone, client, simulator
):
    vm = (
        await client.api(
            "CreateVmInstance", vm_request(zone, primaryStorageUuidForRootVolume=zone.extra["smp"])
        )
    )["inventory"]
    source = vm["hostUuid"]
    target = next(h for h in zone.hosts if h != source)
    sent = record_migrations(simulator, source)
    simulator.hosts[target].faults["agent.network.ensure_bridge"] = Fault(fail_always=True)

    with pytest.raises(RingstackError) as err:
        await client.api("MigrateVm", {"vmInstanceUuid": vm["uuid"], "hostUuid": target})
    assert err.value.code == "VM.MIGRATION_FAILED"
    assert f"cannot migrate to host {target}" in err.value.message
    assert "injected failure of agent.network.ensure_bridge" in err.value.message
    assert err.value.details["step"] == "prepare destination" and err.value.details["hostUuid"] == target
    assert sent == []  # the source was never asked to migrate

    found = await client.api(
        "QueryVmInstance", {"conditions": [{"name": "uuid", "op": "=", "value": vm["uuid"]}]}
    )
    (after,) = found["inventories"]
    assert (after["state"], after["hostUuid"]) == ("Running", source)
    assert vm["uuid"] in simulator.hosts[source].vms and vm["uuid"] not in simulator.hosts[target].vms
    hosts = await _hosts(client)
    assert (hosts[source]["availableCpu"], hosts[target]["availableCpu"]) == (7, 8)  # reservation released
    assert hosts[target]["availableMemorySize"] == 16 * GiB

    # the fault gone, the same migration succeeds
    simulator.hosts[target].faults.clear()
    moved = (await client.api("MigrateVm", {"vmInstanceUuid": vm["uuid"], "hostUuid": target}))["inventory"]
    assert moved["hostUuid"] == target and [c.storage_shared for c in sent] == [True]


async def test_a_vm_on_nfs_is_declared_shared_and_one_partly_on_local_storage_cannot_migrate(
    zone, client, simulator
):
    nfs = (
        await client.api(
            "AddNfsPrimaryStorage",
            {"zoneUuid": zone.zone, "name": "nfs", "url": "nfs.example:/export", "totalCapacity": 1 << 40},
        )
    )["inventory"]["uuid"]
    await client.api(
        "AttachPrimaryStorageToCluster", {"primaryStorageUuid": nfs, "clusterUuid": zone.cluster}
    )
    vm = (await client.api("CreateVmInstance", vm_request(zone, primaryStorageUuidForRootVolume=nfs)))[
        "inventory"
    ]
    sent = record_migrations(simulator, vm["hostUuid"])
    await client.api("MigrateVm", {"vmInstanceUuid": vm["uuid"]})
    assert [c.storage_shared for c in sent] == [True]

    # a data volume on local storage ties the VM to its host
    vm2 = (
        await client.api(
            "CreateVmInstance", vm_request(zone, "vm2", primaryStorageUuidForRootVolume=zone.extra["smp"])
        )
    )["inventory"]
    volume = (
        await client.api(
            "CreateDataVolume", {"name": "data", "diskSize": GiB, "primaryStorageUuid": zone.primary_storage}
        )
    )["inventory"]
    await client.api("AttachDataVolumeToVm", {"vmInstanceUuid": vm2["uuid"], "volumeUuid": volume["uuid"]})
    assert (await client.api("GetVmMigrationCandidateHosts", {"vmInstanceUuid": vm2["uuid"]}))[
        "inventories"
    ] == []
