"""VM lifecycle through the public API on simulated hosts."""

from __future__ import annotations

import pytest

from bus.errors import RingstackError
from tests.support.zone import GiB, build_zone, vm_request


@pytest.fixture
async def zone(node, client, simulator, tmp_path):
    return await build_zone(client, tmp_path)


async def _host(client, uuid):
    return (await client.api("QueryHost", {"conditions": [{"name": "uuid", "op": "=", "value": uuid}]}))[
        "inventories"
    ][0]


async def test_create_then_every_lifecycle_step(zone, client, simulator):
    vm = (await client.api("CreateVmInstance", vm_request(zone, "web1")))["inventory"]
    assert vm["state"] == "Running"
    assert vm["hostUuid"] in zone.hosts
    assert len(vm["vmNics"]) == 1 and vm["vmNics"][0]["ip"].startswith("10.20.")
    assert [v["type"] for v in vm["allVolumes"]] == ["Root"] and vm["allVolumes"][0]["status"] == "Ready"
    host = await _host(client, vm["hostUuid"])
    assert host["availableCpu"] == 7 and host["availableMemorySize"] == 15 * GiB
    assert simulator.hosts[vm["hostUuid"]].vms[vm["uuid"]].state == "Running"

    stopped = (await client.api("StopVmInstance", {"uuid": vm["uuid"]}))["inventory"]
    assert stopped["state"] == "Stopped" and stopped.get("hostUuid") is None
    assert stopped["lastHostUuid"] == vm["hostUuid"]
    assert (await _host(client, vm["hostUuid"]))["availableCpu"] == 8  # a stopped VM holds no CPU
    started = (await client.api("StartVmInstance", {"uuid": vm["uuid"]}))["inventory"]
    assert started["state"] == "Running" and started["hostUuid"] == vm["hostUuid"]
    assert (await client.api("RebootVmInstance", {"uuid": vm["uuid"]}))["inventory"]["state"] == "Running"
    # starting a running VM is a no-op, stopping twice too
    assert (await client.api("StartVmInstance", {"uuid": vm["uuid"]}))["inventory"]["state"] == "Running"

    destroyed = (await client.api("DestroyVmInstance", {"uuid": vm["uuid"]}))["inventory"]
    assert destroyed["state"] == "Destroyed"
    assert vm["uuid"] not in simulator.hosts[vm["hostUuid"]].vms
    with pytest.raises(RingstackError) as err:
        await client.api("StartVmInstance", {"uuid": vm["uuid"]})
    assert err.value.code == "VM.INVALID_STATE" and "Destroyed" in err.value.message
    assert (await client.api("RecoverVmInstance", {"uuid": vm["uuid"]}))["inventory"]["state"] == "Stopped"
    await client.api("DestroyVmInstance", {"uuid": vm["uuid"]})
    await client.api("ExpungeVmInstance", {"uuid": vm["uuid"]})
    assert (await client.api("QueryVmInstance", {"count": True}))["total"] == 0
    free = await client.api("GetFreeIp", {"l3NetworkUuid": zone.l3, "limit": 2000})
    assert vm["vmNics"][0]["ip"] in [f["ip"] for f in free["inventories"]]
    ps = (await client.api("QueryPrimaryStorage", {}))["inventories"][0]
    assert ps["availableCapacity"] == ps["totalCapacity"]


async def test_query_vm_by_nested_nic_ip(zone, client):
    vms = [(await client.api("CreateVmInstance", vm_request(zone, f"q{i}")))["inventory"] for i in range(3)]
    ip = vms[1]["vmNics"][0]["ip"]
    found = await client.api(
        "QueryVmInstance", {"conditions": [{"name": "vmNics.ip", "op": "=", "value": ip}]}
    )
    assert [v["uuid"] for v in found["inventories"]] == [vms[1]["uuid"]]
    nics = await client.api(
        "QueryVmNic", {"conditions": [{"name": "vmInstanceUuid", "op": "=", "value": vms[0]["uuid"]}]}
    )
    assert len(nics["inventories"]) == 1
    volumes = await client.api("QueryVolume", {"conditions": [{"name": "type", "op": "=", "value": "Root"}]})
    assert len(volumes["inventories"]) == 3
