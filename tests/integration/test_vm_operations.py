"""Migration, data volumes, NICs, offerings, console; host tracking and drift reconciliation."""

from __future__ import annotations

import asyncio

import pytest

from bus.envelope import Envelope
from bus.errors import RingstackError
from tests.support.cluster import until
from tests.support.zone import GiB, build_zone, vm_request


@pytest.fixture
async def zone(node, client, simulator, tmp_path):
    return await build_zone(client, tmp_path, hosts=3)


async def _nfs_zone(client, z):
    """Put an NFS primary storage in front of the local one, so VMs can migrate."""
    nfs = (
        await client.api(
            "AddNfsPrimaryStorage",
            {"zoneUuid": z.zone, "name": "nfs", "url": "nfs.example:/export", "totalCapacity": 1 << 40},
        )
    )["inventory"]["uuid"]
    await client.api("AttachPrimaryStorageToCluster", {"primaryStorageUuid": nfs, "clusterUuid": z.cluster})
    return nfs


async def test_migrate_to_a_candidate_host(zone, client, simulator):
    nfs = await _nfs_zone(client, zone)
    vm = (await client.api("CreateVmInstance", vm_request(zone, primaryStorageUuidForRootVolume=nfs)))[
        "inventory"
    ]
    candidates = await client.api("GetVmMigrationCandidateHosts", {"vmInstanceUuid": vm["uuid"]})
    assert {h["uuid"] for h in candidates["inventories"]} == set(zone.hosts) - {vm["hostUuid"]}
    target = candidates["inventories"][0]["uuid"]
    moved = (await client.api("MigrateVm", {"vmInstanceUuid": vm["uuid"], "hostUuid": target}))["inventory"]
    assert moved["hostUuid"] == target and moved["state"] == "Running"
    assert vm["uuid"] in simulator.hosts[target].vms and vm["uuid"] not in simulator.hosts[vm["hostUuid"]].vms
    hosts = {h["uuid"]: h for h in (await client.api("QueryHost", {}))["inventories"]}
    assert hosts[vm["hostUuid"]]["availableCpu"] == 8 and hosts[target]["availableCpu"] == 7


async def test_a_vm_on_local_storage_cannot_migrate(zone, client):
    vm = (await client.api("CreateVmInstance", vm_request(zone)))["inventory"]
    assert (await client.api("GetVmMigrationCandidateHosts", {"vmInstanceUuid": vm["uuid"]}))[
        "inventories"
    ] == []
    with pytest.raises(RingstackError) as err:
        await client.api("MigrateVm", {"vmInstanceUuid": vm["uuid"]})
    assert err.value.code == "VM.NO_HOST_AVAILABLE"
    assert (await client.api("QueryVmInstance", {}))["inventories"][0]["state"] == "Running"  # rolled back


async def test_data_volume_attach_detach_delete(zone, client, simulator):
    vm = (await client.api("CreateVmInstance", vm_request(zone)))["inventory"]
    volume = (await client.api("CreateDataVolume", {"name": "data", "diskSize": 5 * GiB}))["inventory"]
    assert volume["status"] == "NotInstantiated"
    attached = (
        await client.api("AttachDataVolumeToVm", {"vmInstanceUuid": vm["uuid"], "volumeUuid": volume["uuid"]})
    )["inventory"]
    assert (
        attached["vmInstanceUuid"] == vm["uuid"]
        and attached["status"] == "Ready"
        and attached["deviceId"] == 1
    )
    spec = simulator.hosts[vm["hostUuid"]].vms[vm["uuid"]].spec
    assert [v.uuid for v in spec.data_volumes] == [volume["uuid"]]
    with pytest.raises(RingstackError) as err:
        await client.api("DeleteDataVolume", {"uuid": volume["uuid"]})
    assert err.value.code == "VOLUME.IN_USE"
    detached = (
        await client.api(
            "DetachDataVolumeFromVm", {"vmInstanceUuid": vm["uuid"], "volumeUuid": volume["uuid"]}
        )
    )["inventory"]
    assert detached.get("vmInstanceUuid") is None
    assert simulator.hosts[vm["hostUuid"]].vms[vm["uuid"]].spec.data_volumes == []
    await client.api("DeleteDataVolume", {"uuid": volume["uuid"]})
    ps = (await client.api("QueryPrimaryStorage", {}))["inventories"][0]
    root = vm["allVolumes"][0]["size"]
    assert ps["availableCapacity"] == ps["totalCapacity"] - root


async def test_attach_and_detach_an_l3_network(zone, client, simulator):
    vm = (await client.api("CreateVmInstance", vm_request(zone)))["inventory"]
    l3b = (await client.api("CreateL3Network", {"l2NetworkUuid": zone.l2, "name": "second"}))["inventory"][
        "uuid"
    ]
    await client.api(
        "AddIpRangeByNetworkCidr", {"l3NetworkUuid": l3b, "name": "r", "networkCidr": "10.30.0.0/24"}
    )
    with_two = (
        await client.api(
            "AttachL3NetworkToVm",
            {"vmInstanceUuid": vm["uuid"], "l3NetworkUuid": l3b, "staticIp": "10.30.0.77"},
        )
    )["inventory"]
    nic = next(n for n in with_two["vmNics"] if n["l3NetworkUuid"] == l3b)
    assert nic["ip"] == "10.30.0.77" and nic["deviceId"] == 1
    assert len(simulator.hosts[vm["hostUuid"]].vms[vm["uuid"]].spec.nics) == 2
    with pytest.raises(RingstackError) as err:  # that address is taken now
        await client.api("AttachL3NetworkToVm", {"vmInstanceUuid": vm["uuid"], "l3NetworkUuid": l3b})
    assert err.value.code == "SYS.CONFLICT"
    back = (
        await client.api("DetachL3NetworkFromVm", {"vmInstanceUuid": vm["uuid"], "vmNicUuid": nic["uuid"]})
    )["inventory"]
    assert len(back["vmNics"]) == 1
    free = await client.api("CheckIpAvailability", {"l3NetworkUuid": l3b, "ip": "10.30.0.77"})
    assert free["available"] is True


async def test_change_offering_needs_a_stopped_vm_and_console_a_running_one(zone, client):
    vm = (await client.api("CreateVmInstance", vm_request(zone)))["inventory"]
    console = await client.api("GetVmConsoleAddress", {"uuid": vm["uuid"]})
    assert console["protocol"] == "vnc" and console["port"] >= 5900
    bigger = (await client.api("CreateInstanceOffering", {"name": "m", "cpuNum": 2, "memorySize": 2 * GiB}))[
        "inventory"
    ]
    with pytest.raises(RingstackError) as err:
        await client.api(
            "ChangeInstanceOffering", {"vmInstanceUuid": vm["uuid"], "instanceOfferingUuid": bigger["uuid"]}
        )
    assert err.value.code == "VM.INVALID_STATE" and "Running" in err.value.message
    await client.api("StopVmInstance", {"uuid": vm["uuid"]})
    changed = (
        await client.api(
            "ChangeInstanceOffering", {"vmInstanceUuid": vm["uuid"], "instanceOfferingUuid": bigger["uuid"]}
        )
    )["inventory"]
    assert (changed["cpuNum"], changed["memorySize"]) == (2, 2 * GiB)
    started = (await client.api("StartVmInstance", {"uuid": vm["uuid"]}))["inventory"]
    host = next(
        h for h in (await client.api("QueryHost", {}))["inventories"] if h["uuid"] == started["hostUuid"]
    )
    assert host["availableCpu"] == 6
    with pytest.raises(RingstackError) as err:
        await client.api("GetVmConsoleAddress", {"uuid": "d" * 32})
    assert err.value.code == "SYS.NOT_FOUND"


# ---------------------------------------------------------------------- host tracking


@pytest.fixture
def node_config(node_config):
    return node_config.model_copy(update={"host_ping_interval": 0.2, "host_ping_misses": 2})


async def _state(client, vm_uuid):
    return (
        await client.api("QueryVmInstance", {"conditions": [{"name": "uuid", "op": "=", "value": vm_uuid}]})
    )["inventories"][0]


async def test_host_disconnect_and_reconnect_with_drift_in_every_direction(zone, client, simulator):
    events: asyncio.Queue[Envelope] = asyncio.Queue()

    async def on_event(env: Envelope):
        events.put_nowait(env)

    await client.start_consumer(
        client.consume(client.topology.event_queue("drift", "vm.*.*", "host.*.*"), on_event)
    )
    host = zone.hosts[0]
    keep = (await client.api("CreateVmInstance", vm_request(zone, "keep", hostUuid=host)))["inventory"]
    vanish = (await client.api("CreateVmInstance", vm_request(zone, "vanish", hostUuid=host)))["inventory"]
    revive = (await client.api("CreateVmInstance", vm_request(zone, "revive", hostUuid=host)))["inventory"]
    await client.api("StopVmInstance", {"uuid": revive["uuid"]})

    sim = simulator.hosts[host]
    await simulator.control(
        "configure", {"hostUuid": host, "command": "agent.ping", "fault": {"hang": True}}
    )

    async def disconnected():
        h = next(x for x in (await client.api("QueryHost", {}))["inventories"] if x["uuid"] == host)
        return h["status"] == "Disconnected"

    await until(disconnected, 20, "the silent host to be Disconnected")
    assert (await _state(client, keep["uuid"]))["state"] == "Unknown"
    assert (await _state(client, revive["uuid"]))["state"] == "Stopped"

    # while it was away: one VM died, one was started by hand, and a stranger appeared
    del sim.vms[vanish["uuid"]]
    from agents.simulator.simulator import SimVm

    sim.vms[revive["uuid"]] = SimVm(
        sim.vms[keep["uuid"]].spec.model_copy(update={"uuid": revive["uuid"]}), "Running"
    )
    stranger = "5" * 32
    sim.vms[stranger] = SimVm(sim.vms[keep["uuid"]].spec.model_copy(update={"uuid": stranger}), "Running")
    await simulator.control("configure", {"hostUuid": host, "command": "agent.ping", "fault": None})

    async def reconnected():
        h = next(x for x in (await client.api("QueryHost", {}))["inventories"] if x["uuid"] == host)
        return h["status"] == "Connected"

    await until(reconnected, 20, "the host to reconnect")
    assert (await _state(client, keep["uuid"]))["state"] == "Running"
    gone = await _state(client, vanish["uuid"])
    assert gone["state"] == "Stopped" and gone.get("hostUuid") is None
    back = await _state(client, revive["uuid"])
    assert back["state"] == "Running" and back["hostUuid"] == host
    host_row = next(x for x in (await client.api("QueryHost", {}))["inventories"] if x["uuid"] == host)
    assert host_row["availableCpu"] == 8 - 2  # keep and revive hold it; vanish gave its share back

    seen: list[tuple[str, str]] = []
    while not events.empty():
        env = events.get_nowait()
        seen.append((env.name, env.body["resourceUuid"]))
    assert ("vm.stoppedOutside", vanish["uuid"]) in seen
    assert ("vm.startedOutside", revive["uuid"]) in seen
    assert ("host.strayVm", host) in seen
    assert ("host.status", host) in seen


async def test_a_shutdown_inside_the_guest_is_reported_and_followed(zone, client, simulator):
    vm = (await client.api("CreateVmInstance", vm_request(zone)))["inventory"]
    await simulator.control(
        "set_vm_state", {"hostUuid": vm["hostUuid"], "vmUuid": vm["uuid"], "state": "Stopped"}
    )

    async def stopped():
        return (await _state(client, vm["uuid"]))["state"] == "Stopped"

    await until(stopped, 20, "the reported shutdown to reach the VM's state")
