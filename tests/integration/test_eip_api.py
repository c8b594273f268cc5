"""EIPs through the public API against simulated hosts: created from a VIP, attached to a VM NIC
on a Flat L3 they are realised on the VM's host and follow the VM (migrate, stop, start elsewhere,
destroy, expunge); detach, disable and delete take them off; a failed push leaves nothing."""

from __future__ import annotations

from typing import Any

import pytest

from agents.simulator.simulator import Fault
from bus.errors import RingstackError
from mgmt.core import migrate
from schema.db.network import FLAT_PROVIDER_UUID, VIRTUAL_ROUTER_PROVIDER_UUID
from tests.support import infra
from tests.support.cluster import until
from tests.support.zone import add_vr_offering, build_zone, vm_request


@pytest.fixture(autouse=True)
def _events_queues(namespace):
    yield
    import kombu

    with kombu.Connection(infra.BROKER_URL) as conn:
        channel = conn.channel()
        for name in ("flatnetwork", "securitygroup", "vrouter"):
            channel.queue_delete(f"{namespace}.events.{name}")
        channel.close()


@pytest.fixture
async def zone(node, client, simulator, tmp_path):
    """Three hosts, the guest L3 taking DHCP and EIP from Flat, a public L3 on an L2 of its own."""
    z = await build_zone(client, tmp_path, hosts=3)
    api = client.api
    await api(
        "AttachNetworkServiceToL3Network",
        {"l3NetworkUuid": z.l3, "networkServices": {FLAT_PROVIDER_UUID: ["DHCP", "EIP"]}},
    )
    l2 = (
        await api("CreateL2NoVlanNetwork", {"zoneUuid": z.zone, "name": "pub", "physicalInterface": "eth1"})
    )["inventory"]["uuid"]
    await api("AttachL2NetworkToCluster", {"l2NetworkUuid": l2, "clusterUuid": z.cluster})
    public = (await api("CreateL3Network", {"l2NetworkUuid": l2, "name": "public", "category": "Public"}))[
        "inventory"
    ]["uuid"]
    await api(
        "AddIpRangeByNetworkCidr", {"l3NetworkUuid": public, "name": "pub", "networkCidr": "203.0.113.0/28"}
    )
    await api("ShareResource", {"resourceUuids": [public], "toPublic": True})
    nfs = (
        await api(
            "AddNfsPrimaryStorage",
            {"zoneUuid": z.zone, "name": "nfs", "url": "nfs.example:/export", "totalCapacity": 1 << 40},
        )
    )["inventory"]["uuid"]
    await api("AttachPrimaryStorageToCluster", {"primaryStorageUuid": nfs, "clusterUuid": z.cluster})
    z.extra.update(public=public, public_l2=l2, nfs=nfs)
    return z


def eips_on(simulator: Any, host: str) -> dict[str, tuple[str, str]]:
    return dict(simulator.hosts[host].flat_eips)


def everywhere(simulator: Any, zone: Any) -> dict[str, dict[str, tuple[str, str]]]:
    return {h: eips_on(simulator, h) for h in zone.hosts if eips_on(simulator, h)}


async def eip_row(client: Any, uuid: str) -> dict[str, Any] | None:
    found = (await client.api("QueryEip", {"conditions": [{"name": "uuid", "op": "=", "value": uuid}]}))[
        "inventories"
    ]
    return found[0] if found else None


async def vip_of(client: Any, zone: Any, **extra: Any) -> dict[str, Any]:
    return (await client.api("CreateVip", {"name": "vip", "l3NetworkUuid": zone.extra["public"], **extra}))[
        "inventory"
    ]


async def test_an_eip_is_on_its_vms_host_and_follows_the_vm(zone, client, simulator):
    api = client.api
    request = vm_request(zone, hostUuid=zone.hosts[0], primaryStorageUuidForRootVolume=zone.extra["nfs"])
    vm = (await api("CreateVmInstance", request))["inventory"]
    nic = vm["vmNics"][0]
    vip = await vip_of(client, zone)
    eip = (await api("CreateEip", {"name": "e1", "vipUuid": vip["uuid"], "vmNicUuid": nic["uuid"]}))[
        "inventory"
    ]
    assert (eip["vipIp"], eip["guestIp"], eip["vmNicUuid"], eip["state"]) == (
        vip["ip"],
        nic["ip"],
        nic["uuid"],
        "Enabled",
    )
    mapping = {vip["ip"]: (nic["ip"], nic["mac"])}
    # The call returns once the VM's host has it (no waiting), with the public bridge made there.
    assert everywhere(simulator, zone) == {zone.hosts[0]: mapping}
    assert "br_eth1" in simulator.hosts[zone.hosts[0]].bridges
    used = await api("QueryVip", {"conditions": [{"name": "uuid", "op": "=", "value": vip["uuid"]}]})
    assert used["inventories"][0]["useFor"] == "Eip"

    async def only_on(host: str | None):
        return everywhere(simulator, zone) == ({host: mapping} if host else {})

    await api("MigrateVm", {"vmInstanceUuid": vm["uuid"], "hostUuid": zone.hosts[1]})
    await until(lambda: only_on(zone.hosts[1]), 15, "the EIP to move with the migrated VM")
    await api("StopVmInstance", {"uuid": vm["uuid"]})
    await until(lambda: only_on(None), 15, "a stopped VM's EIP to leave its host")
    await api("StartVmInstance", {"uuid": vm["uuid"], "hostUuid": zone.hosts[2]})
    await until(lambda: only_on(zone.hosts[2]), 15, "the EIP to come up where the VM started")

    simulator.hosts[zone.hosts[2]].flat_eips.clear()  # the host lost it (a reboot)
    await api("ReconnectHost", {"uuid": zone.hosts[2]})
    await until(lambda: only_on(zone.hosts[2]), 15, "a reconnected host to get its EIPs back")

    # Detach, attach, disable, enable: each done on the host when the call returns.
    detached = (await api("DetachEip", {"uuid": eip["uuid"]}))["inventory"]
    assert (detached.get("vmNicUuid"), detached.get("guestIp")) == (None, None)
    assert everywhere(simulator, zone) == {}
    await api("AttachEip", {"eipUuid": eip["uuid"], "vmNicUuid": nic["uuid"]})
    assert everywhere(simulator, zone) == {zone.hosts[2]: mapping}
    await api("ChangeEipState", {"uuid": eip["uuid"], "stateEvent": "disable"})
    assert everywhere(simulator, zone) == {}
    assert (await eip_row(client, eip["uuid"]))["vmNicUuid"] == nic["uuid"]  # still attached
    await api("ChangeEipState", {"uuid": eip["uuid"], "stateEvent": "enable"})
    assert everywhere(simulator, zone) == {zone.hosts[2]: mapping}
    renamed = (await api("UpdateEip", {"uuid": eip["uuid"], "name": "web"}))["inventory"]
    assert renamed["name"] == "web"

    # Destroyed: off the host; expunged: the NIC is gone and the EIP stays, detached.
    await api("DestroyVmInstance", {"uuid": vm["uuid"]})
    await until(lambda: only_on(None), 15, "a destroyed VM's EIP to leave its host")
    await api("ExpungeVmInstance", {"uuid": vm["uuid"]})
    row = await eip_row(client, eip["uuid"])
    assert row is not None and (row.get("vmNicUuid"), row.get("guestIp")) == (None, None)

    # Deleted: the VIP is free again (and can go).
    await api("DeleteEip", {"uuid": eip["uuid"]})
    await api("DeleteEip", {"uuid": eip["uuid"]})  # again: still fine
    assert await eip_row(client, eip["uuid"]) is None
    await api("DeleteVip", {"uuid": vip["uuid"]})


async def test_a_failed_push_leaves_no_eip_and_no_rule(zone, client, simulator):
    api = client.api
    host = zone.hosts[0]
    vm = (await api("CreateVmInstance", vm_request(zone, hostUuid=host)))["inventory"]
    nic = vm["vmNics"][0]
    vip = await vip_of(client, zone)
    simulator.hosts[host].faults["agent.flat.apply_eip"] = Fault(fail_nth=[1])
    with pytest.raises(RingstackError) as err:
        await api("CreateEip", {"name": "e", "vipUuid": vip["uuid"], "vmNicUuid": nic["uuid"]})
    assert err.value.code == "AGENT.INJECTED_FAILURE"
    assert (await api("QueryEip", {}))["inventories"] == []
    vip_now = await api("QueryVip", {"conditions": [{"name": "uuid", "op": "=", "value": vip["uuid"]}]})
    assert vip_now["inventories"][0].get("useFor") is None
    assert eips_on(simulator, host) == {}

    # Attaching an existing EIP that fails to apply: it stays detached, the host has nothing.
    eip = (await api("CreateEip", {"name": "e", "vipUuid": vip["uuid"]}))["inventory"]
    done = simulator.hosts[host].calls.get("agent.flat.apply_eip", 0)
    simulator.hosts[host].faults["agent.flat.apply_eip"] = Fault(fail_nth=[done + 1])
    with pytest.raises(RingstackError):
        await api("AttachEip", {"eipUuid": eip["uuid"], "vmNicUuid": nic["uuid"]})
    assert (await eip_row(client, eip["uuid"])).get("vmNicUuid") is None
    assert eips_on(simulator, host) == {}
    # A detach that cannot reach the host fails and keeps the EIP attached (and applied).
    await api("AttachEip", {"eipUuid": eip["uuid"], "vmNicUuid": nic["uuid"]})
    simulator.hosts[host].faults["agent.flat.apply_eip"] = Fault(fail_always=True)
    with pytest.raises(RingstackError):
        await api("DetachEip", {"uuid": eip["uuid"]})
    assert (await eip_row(client, eip["uuid"]))["vmNicUuid"] == nic["uuid"]
    assert eips_on(simulator, host) == {vip["ip"]: (nic["ip"], nic["mac"])}
    simulator.hosts[host].faults.clear()
    await api("DeleteEip", {"uuid": eip["uuid"]})
    assert eips_on(simulator, host) == {}


async def test_eips_are_checked_and_owned(zone, client, simulator):
    api = client.api
    vm = (await api("CreateVmInstance", vm_request(zone)))["inventory"]
    nic = vm["vmNics"][0]
    vip, vip2 = await vip_of(client, zone), await vip_of(client, zone)
    eip = (await api("CreateEip", {"name": "e", "vipUuid": vip["uuid"], "vmNicUuid": nic["uuid"]}))[
        "inventory"
    ]
    cases = [
        ("CreateEip", {"name": "x", "vipUuid": vip["uuid"]}, "EIP.VIP_IN_USE"),
        ("CreateEip", {"name": "x", "vipUuid": vip2["uuid"], "vmNicUuid": nic["uuid"]}, "EIP.NIC_HAS_EIP"),
        ("AttachEip", {"eipUuid": eip["uuid"], "vmNicUuid": "f" * 32}, "EIP.ALREADY_ATTACHED"),
        ("DeleteVip", {"uuid": vip["uuid"]}, "VROUTER.VIP_IN_USE"),
    ]
    for name, body, code in cases:
        with pytest.raises(RingstackError) as err:
            await api(name, body)
        assert err.value.code == code, (name, err.value)
    assert {e["uuid"] for e in (await api("QueryEip", {}))["inventories"]} == {eip["uuid"]}  # none half-made

    # An L3 without an EIP provider: refused before anything changes.
    plain = (await api("CreateL3Network", {"l2NetworkUuid": zone.l2, "name": "plain"}))["inventory"]["uuid"]
    await api("AddIpRangeByNetworkCidr", {"l3NetworkUuid": plain, "name": "r", "networkCidr": "10.30.0.0/24"})
    other = (await api("CreateVmInstance", {**vm_request(zone, name="o"), "l3NetworkUuids": [plain]}))[
        "inventory"
    ]
    spare = (await api("CreateEip", {"name": "s", "vipUuid": vip2["uuid"]}))["inventory"]
    with pytest.raises(RingstackError) as err:
        await api("AttachEip", {"eipUuid": spare["uuid"], "vmNicUuid": "f" * 32})
    assert err.value.code == "SYS.NOT_FOUND"
    with pytest.raises(RingstackError) as err:
        await api("AttachEip", {"eipUuid": spare["uuid"], "vmNicUuid": other["vmNics"][0]["uuid"]})
    assert err.value.code == "EIP.NO_PROVIDER"
    assert (await eip_row(client, spare["uuid"])).get("vmNicUuid") is None

    # A tenant: sees only its own EIPs, cannot use another account's NIC, is counted by quota.
    tenant = await client.new_account("eip-tenant")
    mine = (await tenant.api("CreateVip", {"name": "t", "l3NetworkUuid": zone.extra["public"]}))["inventory"]
    t_eip = (await tenant.api("CreateEip", {"name": "t", "vipUuid": mine["uuid"]}))["inventory"]
    assert [e["uuid"] for e in (await tenant.api("QueryEip", {}))["inventories"]] == [t_eip["uuid"]]
    with pytest.raises(RingstackError) as err:
        await tenant.api("AttachEip", {"eipUuid": t_eip["uuid"], "vmNicUuid": nic["uuid"]})
    assert err.value.code == "SYS.NOT_FOUND"
    await tenant.api("DeleteEip", {"uuid": eip["uuid"]})  # one it cannot see: nothing happens
    assert (await eip_row(client, eip["uuid"]))["vmNicUuid"] == nic["uuid"]
    with pytest.raises(RingstackError) as err:  # the admin's VIP
        await tenant.api("CreateEip", {"name": "t2", "vipUuid": vip2["uuid"]})
    assert err.value.code == "SYS.NOT_FOUND"


EIP_TABLES = {"eip", "flat_eip_host"}


def test_the_eip_migration_matches_the_models_and_downgrades():
    from alembic import command

    name = infra.unique("rs_eipmig_")
    url = infra.create_database(name)
    try:
        migrate.upgrade(url, "0016")
        assert infra.schema_diffs(url, EIP_TABLES) == []
        command.downgrade(migrate.alembic_config(url), "-1")
        assert {d[1].name for d in infra.schema_diffs(url, EIP_TABLES) if d[0] == "add_table"} == EIP_TABLES
        migrate.upgrade(url, "0016")
        assert infra.schema_diffs(url, EIP_TABLES) == []
    finally:
        infra.drop_database(name)


async def test_an_eip_goes_when_its_public_network_is_deleted_with_enforcing(zone, client, simulator):
    api = client.api
    host = zone.hosts[0]
    vm = (await api("CreateVmInstance", vm_request(zone, hostUuid=host)))["inventory"]
    nic = vm["vmNics"][0]
    vip = await vip_of(client, zone)
    eip = (await api("CreateEip", {"name": "e", "vipUuid": vip["uuid"], "vmNicUuid": nic["uuid"]}))[
        "inventory"
    ]
    assert eips_on(simulator, host) == {vip["ip"]: (nic["ip"], nic["mac"])}
    with pytest.raises(RingstackError) as err:
        await api("DeleteL3Network", {"uuid": zone.extra["public"]})
    assert err.value.code == "SYS.RESOURCE_IN_USE"
    await api("DeleteL3Network", {"uuid": zone.extra["public"], "deleteMode": "Enforcing"})
    assert await eip_row(client, eip["uuid"]) is None

    async def gone():
        return eips_on(simulator, host) == {}

    await until(gone, 15, "the host to drop an EIP its VIP's network took along")


async def test_a_nic_detached_from_its_vm_takes_the_eip_off_its_host(zone, client, simulator):
    api = client.api
    host = zone.hosts[0]
    second = (await api("CreateL3Network", {"l2NetworkUuid": zone.l2, "name": "second"}))["inventory"]["uuid"]
    await api(
        "AddIpRangeByNetworkCidr", {"l3NetworkUuid": second, "name": "r", "networkCidr": "10.50.0.0/24"}
    )
    await api(
        "AttachNetworkServiceToL3Network",
        {"l3NetworkUuid": second, "networkServices": {FLAT_PROVIDER_UUID: ["DHCP", "EIP"]}},
    )
    vm = (
        await api(
            "CreateVmInstance", {**vm_request(zone, hostUuid=host), "l3NetworkUuids": [zone.l3, second]}
        )
    )["inventory"]
    nic = next(n for n in vm["vmNics"] if n["l3NetworkUuid"] == second)
    vip = await vip_of(client, zone)
    eip = (await api("CreateEip", {"name": "e", "vipUuid": vip["uuid"], "vmNicUuid": nic["uuid"]}))[
        "inventory"
    ]
    assert eips_on(simulator, host) == {vip["ip"]: (nic["ip"], nic["mac"])}
    await api("DetachL3NetworkFromVm", {"vmInstanceUuid": vm["uuid"], "vmNicUuid": nic["uuid"]})
    row = await eip_row(client, eip["uuid"])
    assert row is not None and (row.get("vmNicUuid"), row.get("guestIp")) == (None, None)

    async def gone():
        return eips_on(simulator, host) == {}

    await until(gone, 15, "the host to drop the EIP of a NIC that went")


async def test_one_zone_with_a_flat_l3_and_a_virtual_router_l3(node, zone, client, simulator):
    """Each NIC's EIP goes to its own L3's provider: the Flat one onto the host, the VirtualRouter
    one onto the L3's VR; the flat L3 is served by the host's DHCP, the VR one by its VR."""
    api = client.api
    host = zone.hosts[0]
    await add_vr_offering(client, zone, public=zone.extra["public"])
    vr_l3 = (await api("CreateL3Network", {"l2NetworkUuid": zone.l2, "name": "behind-vr"}))["inventory"][
        "uuid"
    ]
    await api("AddIpRangeByNetworkCidr", {"l3NetworkUuid": vr_l3, "name": "r", "networkCidr": "10.40.0.0/24"})
    await api(
        "AttachNetworkServiceToL3Network",
        {"l3NetworkUuid": vr_l3, "networkServices": {VIRTUAL_ROUTER_PROVIDER_UUID: ["DHCP", "SNAT", "EIP"]}},
    )
    vm = (
        await api("CreateVmInstance", {**vm_request(zone, hostUuid=host), "l3NetworkUuids": [zone.l3, vr_l3]})
    )["inventory"]
    nics = {n["l3NetworkUuid"]: n for n in vm["vmNics"]}
    flat_nic, vr_nic = nics[zone.l3], nics[vr_l3]
    [router] = (await api("QueryVirtualRouterVm", {}))["inventories"]
    on_vr = simulator.vrouters[router["uuid"]]
    assert [str(d.mac) for d in on_vr.state.dhcp] == [vr_nic["mac"]]
    vip1, vip2 = await vip_of(client, zone), await vip_of(client, zone)

    flat = (await api("CreateEip", {"name": "f", "vipUuid": vip1["uuid"], "vmNicUuid": flat_nic["uuid"]}))[
        "inventory"
    ]
    vr = (await api("CreateEip", {"name": "vr", "vipUuid": vip2["uuid"], "vmNicUuid": vr_nic["uuid"]}))[
        "inventory"
    ]
    assert eips_on(simulator, host) == {vip1["ip"]: (flat_nic["ip"], flat_nic["mac"])}
    assert [(str(e.vip_ip), str(e.guest_ip)) for e in on_vr.state.eips] == [(vip2["ip"], vr_nic["ip"])]
    assert [str(v.ip) for v in on_vr.state.vips] == [vip2["ip"]]

    async def dhcp_only_for_flat():
        served = simulator.hosts[host].flat_dhcp
        return served.get(zone.l3) == {flat_nic["mac"]: flat_nic["ip"]} and vr_l3 not in served

    await until(dhcp_only_for_flat, 15, "the host to serve DHCP for the flat L3 only")

    # A full sync of the VR (a reconnect) keeps the EIP: it is read from the database.
    on_vr.state = type(on_vr.state)()
    await api("ReconnectVirtualRouter", {"vmInstanceUuid": router["uuid"]})
    assert [(str(e.vip_ip), str(e.guest_ip)) for e in on_vr.state.eips] == [(vip2["ip"], vr_nic["ip"])]

    await api("DetachEip", {"uuid": vr["uuid"]})
    assert on_vr.state.eips == [] and on_vr.state.vips == []
    assert eips_on(simulator, host) == {vip1["ip"]: (flat_nic["ip"], flat_nic["mac"])}
    await api("DeleteEip", {"uuid": flat["uuid"]})
    assert eips_on(simulator, host) == {}
