"""VXLAN pools, VNI ranges and VXLAN networks through the public API, and a VM on a VXLAN network
started on a simulated host with the VNI and its pool's VTEPs (packets: tests/system/test_vxlan.py)."""

from __future__ import annotations

import pytest

from bus.errors import RingstackError
from tests.support.zone import build_zone, vm_request


@pytest.fixture
async def zone(node, client, simulator, tmp_path):
    return await build_zone(client, tmp_path, hosts=2)


async def test_pool_ranges_networks_and_a_vm_on_one(zone, client, simulator):
    api = client.api
    pool = (
        await api(
            "CreateL2VxlanNetworkPool", {"zoneUuid": zone.zone, "name": "pool", "physicalInterface": "eth0"}
        )
    )["inventory"]
    assert pool["type"] == "L2VxlanNetworkPool"
    await api("CreateVniRange", {"l2NetworkUuid": pool["uuid"], "name": "r", "startVni": 100, "endVni": 200})
    with pytest.raises(RingstackError) as err:
        await api(
            "CreateVniRange", {"l2NetworkUuid": pool["uuid"], "name": "r2", "startVni": 150, "endVni": 300}
        )
    assert err.value.code == "L2.VNI_RANGE_OVERLAP"
    # The pool shares eth0 with the zone's no-VLAN L2 in the same cluster: VXLAN is an overlay.
    await api("AttachL2NetworkToCluster", {"l2NetworkUuid": pool["uuid"], "clusterUuid": zone.cluster})

    first = (await api("CreateL2VxlanNetwork", {"poolUuid": pool["uuid"], "name": "vx-a"}))["inventory"]
    assert (first["type"], first["vni"], first["poolUuid"]) == ("L2VxlanNetwork", 100, pool["uuid"])
    assert first["attachedClusterUuids"] == [zone.cluster]  # where the pool is
    second = (await api("CreateL2VxlanNetwork", {"poolUuid": pool["uuid"], "name": "vx-b", "vni": 150}))[
        "inventory"
    ]
    assert second["vni"] == 150
    for vni in (150, 500):  # taken; outside every range
        with pytest.raises(RingstackError) as err:
            await api("CreateL2VxlanNetwork", {"poolUuid": pool["uuid"], "name": "vx-c", "vni": vni})
        assert err.value.code == "L2.VNI_UNAVAILABLE"
    with pytest.raises(RingstackError) as err:  # a pool uuid naming an ordinary L2
        await api("CreateL2VxlanNetwork", {"poolUuid": zone.l2, "name": "vx-d"})
    assert err.value.code == "L2.NOT_A_VXLAN_POOL"
    ranges = (await api("QueryVniRange", {}))["inventories"]
    assert [(r["startVni"], r["endVni"]) for r in ranges] == [(100, 200)]

    l3 = (await api("CreateL3Network", {"l2NetworkUuid": first["uuid"], "name": "vx-l3"}))["inventory"][
        "uuid"
    ]
    await api("AddIpRangeByNetworkCidr", {"l3NetworkUuid": l3, "name": "r", "networkCidr": "10.77.0.0/24"})
    vm = (await api("CreateVmInstance", {**vm_request(zone), "l3NetworkUuids": [l3]}))["inventory"]
    spec = simulator.hosts[vm["hostUuid"]].vms[vm["uuid"]].spec.nics[0].l2
    hosts = {h["uuid"]: h["managementIp"] for h in (await api("QueryHost", {}))["inventories"]}
    assert (spec.type, spec.vni, spec.bridge_name) == ("L2VxlanNetwork", 100, "br_vx100")
    assert {v.host_uuid: v.vtep_ip for v in spec.vteps or []} == hosts

    # A new cluster attachment of the pool reaches its networks; a pool with networks stays.
    with pytest.raises(RingstackError) as err:
        await api("DeleteL2Network", {"uuid": pool["uuid"]})
    assert err.value.code == "L2.POOL_IN_USE"
    await api("DetachL2NetworkFromCluster", {"l2NetworkUuid": pool["uuid"], "clusterUuid": zone.cluster})
    detached = await api(
        "QueryL2Network", {"conditions": [{"name": "uuid", "op": "=", "value": second["uuid"]}]}
    )
    assert detached["inventories"][0]["attachedClusterUuids"] == []
    await api("AttachL2NetworkToCluster", {"l2NetworkUuid": pool["uuid"], "clusterUuid": zone.cluster})
    attached = await api(
        "QueryL2Network", {"conditions": [{"name": "uuid", "op": "=", "value": second["uuid"]}]}
    )
    assert attached["inventories"][0]["attachedClusterUuids"] == [zone.cluster]
