"""A failed CreateVmInstance leaves nothing behind: failure injected at every step of the flow."""

from __future__ import annotations

import pytest

from bus.errors import RingstackError
from tests.support.zone import GiB, build_zone, vm_request


@pytest.fixture
async def zone(node, client, simulator, tmp_path):
    z = await build_zone(client, tmp_path, hosts=1)
    z.extra["disk"] = await client.api("CreateDiskOffering", {"name": "data", "diskSize": 2 * GiB})
    return z


async def _snapshot(client, simulator, z):
    host = (await client.api("QueryHost", {}))["inventories"][0]
    ps = (await client.api("QueryPrimaryStorage", {}))["inventories"][0]
    ips = await client.api("GetFreeIp", {"l3NetworkUuid": z.l3, "limit": 5000})
    sim = simulator.hosts[z.hosts[0]]
    return {
        "cpu": host["availableCpu"],
        "memory": host["availableMemorySize"],
        "storage": ps["availableCapacity"],
        "freeIps": len(ips["inventories"]),
        "vms": (await client.api("QueryVmInstance", {"count": True}))["total"],
        "volumes": (await client.api("QueryVolume", {"count": True}))["total"],
        "nics": (await client.api("QueryVmNic", {"count": True}))["total"],
        "agentVms": dict(sim.vms),
        "agentVolumes": dict(sim.volumes),
    }


# (agent command, which call fails, the flow step that then fails)
FAULTS = [
    ("agent.volume.create", 1, "create-volumes"),  # the root volume
    ("agent.volume.create", 2, "create-volumes"),  # the data volume, after the root one was made
    ("agent.network.ensure_bridge", 1, "prepare-network"),
    ("agent.vm.start", 1, "start-on-host"),
]


@pytest.mark.parametrize(("command", "nth", "step"), FAULTS)
async def test_failure_at_each_step_rolls_back_completely(zone, client, simulator, command, nth, step):
    before = await _snapshot(client, simulator, zone)
    await simulator.control(
        "configure", {"hostUuid": zone.hosts[0], "command": command, "fault": {"failNth": [nth]}}
    )
    request = vm_request(zone, "doomed", dataDiskOfferingUuids=[zone.extra["disk"]["inventory"]["uuid"]])
    with pytest.raises(RingstackError) as err:
        await client.api("CreateVmInstance", request)
    assert err.value.code == "AGENT.INJECTED_FAILURE"
    assert err.value.details["failedStep"] == step
    assert "rollbackFailures" not in err.value.details
    assert await _snapshot(client, simulator, zone) == before
    # and the same request works once the fault is gone
    vm = (await client.api("CreateVmInstance", request))["inventory"]
    assert vm["state"] == "Running" and len(vm["allVolumes"]) == 2


async def test_no_capacity_fails_cleanly_and_names_the_need(zone, client, simulator):
    before = await _snapshot(client, simulator, zone)
    big = (await client.api("CreateInstanceOffering", {"name": "huge", "cpuNum": 64, "memorySize": GiB}))[
        "inventory"
    ]
    with pytest.raises(RingstackError) as err:
        await client.api("CreateVmInstance", {**vm_request(zone), "instanceOfferingUuid": big["uuid"]})
    assert err.value.code == "VM.NO_HOST_AVAILABLE" and "64 CPUs" in err.value.message
    assert await _snapshot(client, simulator, zone) == before


async def test_deadline_mid_flow_rolls_back(zone, client, simulator):
    before = await _snapshot(client, simulator, zone)
    await simulator.control(
        "configure", {"hostUuid": zone.hosts[0], "command": "agent.vm.start", "fault": {"latency": 30}}
    )
    with pytest.raises(RingstackError) as err:
        await client.api("CreateVmInstance", vm_request(zone, "slow"), timeout=3)
    assert err.value.code == "SYS.TIMEOUT"

    async def rolled_back():
        return await _snapshot(client, simulator, zone) == before

    from tests.support.cluster import until

    await until(rolled_back, 30, "the timed-out create to roll back")


async def test_a_volume_whose_create_answered_too_late_is_deleted_by_uuid(zone, client, simulator):
    """The create's answer never came back in time, so its path is unknown; the rollback deletes
    the volume by its uuid, after the slow create (the agent runs one volume's commands in order)."""
    before = await _snapshot(client, simulator, zone)
    await simulator.control(
        "configure", {"hostUuid": zone.hosts[0], "command": "agent.volume.create", "fault": {"latency": 5}}
    )
    with pytest.raises(RingstackError) as err:
        await client.api("CreateVmInstance", vm_request(zone, "late"), timeout=2)
    assert err.value.code == "SYS.TIMEOUT"

    async def rolled_back():
        return await _snapshot(client, simulator, zone) == before

    from tests.support.cluster import until

    await until(rolled_back, 30, "the late volume to be deleted and the create rolled back")
    assert simulator.hosts[zone.hosts[0]].calls.get("agent.volume.delete") == 1


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"l3NetworkUuids": []}, "l3NetworkUuids"),
        ({"l3NetworkUuids": ["x"]}, "l3NetworkUuids.0"),
        ({"defaultL3NetworkUuid": "f" * 32}, "(body)"),
        ({"rootDiskSize": 0}, "rootDiskSize"),
        ({"strategy": "Later"}, "strategy"),
        ({"name": ""}, "name"),
        ({"cpuNum": 2}, "cpuNum"),
    ],
)
async def test_create_validation_errors(zone, client, change, field):
    with pytest.raises(RingstackError) as err:
        await client.api("CreateVmInstance", {**vm_request(zone), **change})
    assert err.value.code == "SYS.INVALID_ARGUMENT"
    assert field in [e["field"] for e in err.value.details["errors"]] or field == "(body)"


async def test_unknown_references_are_not_found(zone, client):
    for key in ("instanceOfferingUuid", "imageUuid"):
        with pytest.raises(RingstackError) as err:
            await client.api("CreateVmInstance", {**vm_request(zone), key: "e" * 32})
        assert err.value.code == "SYS.NOT_FOUND"
