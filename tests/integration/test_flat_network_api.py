"""The Flat provider through the public API against simulated hosts: each host is told the DHCP
entries of its own VMs only, the entries follow a migration and a stop, and a reconnecting host
gets its whole state back."""

from __future__ import annotations

import pytest

from schema.db.network import FLAT_PROVIDER_UUID
from tests.support import infra
from tests.support.cluster import until
from tests.support.zone import build_zone, vm_request


@pytest.fixture(autouse=True)
def _events_queues(namespace):
    yield
    import kombu

    with kombu.Connection(infra.BROKER_URL) as conn:
        channel = conn.channel()
        for name in ("flatnetwork", "securitygroup"):
            channel.queue_delete(f"{namespace}.events.{name}")
        channel.close()


@pytest.fixture
async def zone(node, client, simulator, tmp_path):
    z = await build_zone(client, tmp_path, hosts=3)
    await client.api(
        "AttachNetworkServiceToL3Network",
        {"l3NetworkUuid": z.l3, "networkServices": {FLAT_PROVIDER_UUID: ["DHCP"]}},
    )
    return z


def served(simulator, host: str, l3: str) -> dict[str, str]:
    return simulator.hosts[host].flat_dhcp.get(l3, {})


async def test_each_host_serves_its_own_vms_and_follows_them(node, zone, client, simulator):
    nfs = (
        await client.api(
            "AddNfsPrimaryStorage",
            {"zoneUuid": zone.zone, "name": "nfs", "url": "nfs.example:/export", "totalCapacity": 1 << 40},
        )
    )["inventory"]["uuid"]
    await client.api(
        "AttachPrimaryStorageToCluster", {"primaryStorageUuid": nfs, "clusterUuid": zone.cluster}
    )
    vms = [
        (
            await client.api(
                "CreateVmInstance",
                vm_request(zone, name=f"vm{i}", hostUuid=zone.hosts[i], primaryStorageUuidForRootVolume=nfs),
            )
        )["inventory"]
        for i in range(2)
    ]
    nics = [vm["vmNics"][0] for vm in vms]

    async def both_served():
        return all(
            served(simulator, vm["hostUuid"], zone.l3) == {n["mac"]: n["ip"]} for vm, n in zip(vms, nics, strict=True)
        )

    await until(both_served, 15, "each host to serve exactly its own VM's lease")
    # The server's address came from IPAM, once, for the L3 itself.
    from sqlalchemy import select

    from schema.db.network import UsedIp

    used = await node.db.run(
        lambda session: list(session.scalars(select(UsedIp.ip).where(UsedIp.used_for_uuid == zone.l3)))
    )
    assert len(used) == 1 and used[0] not in {n["ip"] for n in nics}

    target = zone.hosts[2]
    await client.api("MigrateVm", {"vmInstanceUuid": vms[0]["uuid"], "hostUuid": target})

    async def moved():
        return served(simulator, target, zone.l3) == {nics[0]["mac"]: nics[0]["ip"]} and not served(
            simulator, zone.hosts[0], zone.l3
        )

    await until(moved, 15, "the lease to move with the VM")
    await client.api("StopVmInstance", {"uuid": vms[1]["uuid"]})

    async def stopped():
        return not served(simulator, zone.hosts[1], zone.l3)

    await until(stopped, 15, "a stopped VM's lease to leave its host")

    simulator.hosts[target].flat_dhcp.clear()  # the host lost it (a reboot)
    await client.api("ReconnectHost", {"uuid": target})

    async def restored():
        return served(simulator, target, zone.l3) == {nics[0]["mac"]: nics[0]["ip"]}

    await until(restored, 15, "a reconnected host to get its whole flat state")


async def test_a_vm_without_flat_dhcp_pushes_nothing(node, client, simulator, tmp_path):
    z = await build_zone(client, tmp_path, hosts=1)
    await client.api("CreateVmInstance", vm_request(z))
    host = simulator.hosts[z.hosts[0]]
    assert "agent.flat.apply_dhcp" not in host.calls or host.flat_dhcp == {}
