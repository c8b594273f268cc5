"""Security groups through the public API against simulated hosts: what each host is told after
API calls and VM events (migration, destroy), a failing host (structured error, state kept,
reapplied on reconnect), and the plugin removed (every VM operation still works, no rule pushed)."""

from __future__ import annotations

import pytest

from bus.errors import RingstackError, Sys
from mgmt.core import migrate
from tests.support import infra
from tests.support.cluster import until
from tests.support.zone import build_zone, vm_request

SG_TABLES = {
    "security_group",
    "security_group_rule",
    "security_group_l3_network_ref",
    "vm_nic_security_group_ref",
    "security_group_host_nic",
    "security_group_failed_host",
    "vni_range",
    "l2_vxlan_network",
    "flat_dhcp_host_vm",
}


@pytest.fixture(autouse=True)
def _events_queue(namespace):
    """The plugin's durable event queue is shared by nodes (it would expire on its own)."""
    yield
    import kombu

    with kombu.Connection(infra.BROKER_URL) as conn:
        channel = conn.channel()
        channel.queue_delete(f"{namespace}.events.securitygroup")
        channel.close()


@pytest.fixture
async def zone(node, client, simulator, tmp_path):
    return await build_zone(client, tmp_path, hosts=3)


async def _nfs(client, z) -> str:
    """NFS primary storage in front of the local one, so VMs can migrate."""
    nfs = (
        await client.api(
            "AddNfsPrimaryStorage",
            {"zoneUuid": z.zone, "name": "nfs", "url": "nfs.example:/export", "totalCapacity": 1 << 40},
        )
    )["inventory"]["uuid"]
    await client.api("AttachPrimaryStorageToCluster", {"primaryStorageUuid": nfs, "clusterUuid": z.cluster})
    return nfs


async def _group(client, z, name="web") -> dict:
    group = (await client.api("CreateSecurityGroup", {"name": name}))["inventory"]
    attached = await client.api(
        "AttachSecurityGroupToL3Network", {"securityGroupUuid": group["uuid"], "l3NetworkUuid": z.l3}
    )
    return attached["inventory"]


def sg(simulator, host: str) -> dict:
    h = simulator.hosts[host]
    return {"nics": h.sg_nics, "rules": h.sg_rules, "members": h.sg_members}


async def test_rules_and_members_reach_the_hosts_of_the_nics(zone, client, simulator):
    vms = [
        (await client.api("CreateVmInstance", vm_request(zone, name=f"vm{i}", hostUuid=zone.hosts[i])))[
            "inventory"
        ]
        for i in range(2)
    ]
    nics = [vm["vmNics"][0] for vm in vms]
    group = await _group(client, zone)
    assert group["attachedL3NetworkUuids"] == [zone.l3]
    await client.api(
        "AddVmNicToSecurityGroup",
        {"securityGroupUuid": group["uuid"], "vmNicUuids": [n["uuid"] for n in nics]},
    )
    for vm, nic in zip(vms, nics, strict=True):
        assert sg(simulator, vm["hostUuid"])["nics"] == {nic["uuid"]: [group["uuid"]]}
    assert sg(simulator, zone.hosts[2])["nics"] == {}  # no NIC of the group there: not told

    reply = await client.api(
        "AddSecurityGroupRule",
        {
            "securityGroupUuid": group["uuid"],
            "rules": [
                {"type": "Ingress", "protocol": "ICMP", "remoteSecurityGroupUuid": group["uuid"]},
                {
                    "type": "Ingress",
                    "protocol": "TCP",
                    "startPort": 22,
                    "endPort": 22,
                    "allowedCidr": "10.0.0.0/8",
                },
            ],
        },
    )
    assert [r["protocol"] for r in reply["inventory"]["rules"]] == ["ICMP", "TCP"]
    for vm in vms:
        told = sg(simulator, vm["hostUuid"])
        assert len(told["rules"][group["uuid"]]) == 2
        assert told["members"] == {group["uuid"]: {n["ip"] for n in nics}}

    rules = (
        await client.api(
            "QuerySecurityGroupRule",
            {
                "conditions": [
                    {"name": "securityGroupUuid", "op": "=", "value": group["uuid"]},
                    {"name": "protocol", "op": "=", "value": "TCP"},
                ]
            },
        )
    )["inventories"]
    assert len(rules) == 1 and rules[0]["startPort"] == 22
    refs = (await client.api("QueryVmNicInSecurityGroup", {}))["inventories"]
    assert {r["vmNicUuid"] for r in refs} == {n["uuid"] for n in nics}
    found = await client.api(
        "QuerySecurityGroup", {"conditions": [{"name": "name", "op": "=", "value": "web"}]}
    )
    assert [g["uuid"] for g in found["inventories"]] == [group["uuid"]]

    # A member leaving changes the other host's set; the NIC leaves its own host's chains.
    await client.api(
        "DeleteVmNicFromSecurityGroup", {"securityGroupUuid": group["uuid"], "vmNicUuids": [nics[0]["uuid"]]}
    )
    assert sg(simulator, vms[0]["hostUuid"])["nics"] == {}
    assert sg(simulator, vms[1]["hostUuid"])["members"] == {group["uuid"]: {nics[1]["ip"]}}

    await client.api("DeleteSecurityGroupRule", {"ruleUuids": [rules[0]["uuid"]]})
    assert len(sg(simulator, vms[1]["hostUuid"])["rules"][group["uuid"]]) == 1

    with pytest.raises(RingstackError) as err:
        await client.api("DeleteSecurityGroup", {"uuid": group["uuid"]})
    assert err.value.code == Sys.RESOURCE_IN_USE
    await client.api("DeleteSecurityGroup", {"uuid": group["uuid"], "deleteMode": "Enforcing"})
    assert sg(simulator, vms[1]["hostUuid"])["nics"] == {}
    assert (await client.api("QuerySecurityGroupRule", {}))["inventories"] == []


async def test_vm_events_move_and_remove_rules(zone, client, simulator):
    nfs = await _nfs(client, zone)
    vm = (await client.api("CreateVmInstance", vm_request(zone, primaryStorageUuidForRootVolume=nfs)))[
        "inventory"
    ]
    nic = vm["vmNics"][0]
    group = await _group(client, zone)
    await client.api(
        "AddVmNicToSecurityGroup", {"securityGroupUuid": group["uuid"], "vmNicUuids": [nic["uuid"]]}
    )
    source = vm["hostUuid"]
    assert nic["uuid"] in sg(simulator, source)["nics"]

    target = next(h for h in zone.hosts if h != source)
    await client.api("MigrateVm", {"vmInstanceUuid": vm["uuid"], "hostUuid": target})

    async def moved():
        return nic["uuid"] in sg(simulator, target)["nics"] and not sg(simulator, source)["nics"]

    await until(moved, 15, "the NIC's rules to follow the VM to its new host")

    await client.api("StopVmInstance", {"uuid": vm["uuid"]})

    async def gone():
        return not sg(simulator, target)["nics"]

    await until(gone, 15, "a stopped VM's rules to leave its host")
    started = (await client.api("StartVmInstance", {"uuid": vm["uuid"]}))["inventory"]

    async def back():
        return nic["uuid"] in sg(simulator, started["hostUuid"])["nics"]

    await until(back, 15, "a started VM's rules on its host")
    await client.api("DestroyVmInstance", {"uuid": vm["uuid"]})

    async def destroyed():
        return not any(sg(simulator, h)["nics"] for h in zone.hosts)

    await until(destroyed, 15, "a destroyed VM's rules to leave every host")


async def test_a_failing_host_fails_the_call_keeps_the_state_and_gets_it_on_reconnect(
    zone, client, simulator
):
    vm = (await client.api("CreateVmInstance", vm_request(zone)))["inventory"]
    nic, host = vm["vmNics"][0], vm["hostUuid"]
    group = await _group(client, zone)
    await client.api(
        "AddVmNicToSecurityGroup", {"securityGroupUuid": group["uuid"], "vmNicUuids": [nic["uuid"]]}
    )
    await simulator.control(
        "configure",
        {"hostUuid": host, "command": "agent.securitygroup.apply", "fault": {"failAlways": True}},
    )
    with pytest.raises(RingstackError) as err:
        await client.api(
            "AddSecurityGroupRule",
            {"securityGroupUuid": group["uuid"], "rules": [{"type": "Ingress", "protocol": "ICMP"}]},
        )
    assert err.value.code == "SECURITYGROUP.APPLY_FAILED"
    assert set(err.value.details["hosts"]) == {host}
    assert err.value.details["hosts"][host]["code"] == "AGENT.INJECTED_FAILURE"
    # The rule is saved: it is what was asked for.
    rules = (await client.api("QuerySecurityGroupRule", {}))["inventories"]
    assert [r["protocol"] for r in rules] == ["ICMP"]
    assert sg(simulator, host)["rules"][group["uuid"]] == []  # the host still has the old state

    await simulator.control("configure", {"hostUuid": host, "command": "agent.securitygroup.apply"})
    simulator.hosts[host].sg_nics.clear()  # and the host lost everything meanwhile (a reboot)
    await client.api("ReconnectHost", {"uuid": host})

    async def resynced():
        told = sg(simulator, host)
        return told["nics"] == {nic["uuid"]: [group["uuid"]]} and len(told["rules"][group["uuid"]]) == 1

    await until(resynced, 15, "the reconnected host to get its whole state")


async def test_bad_requests_are_refused_with_structured_errors(zone, client):
    group = (await client.api("CreateSecurityGroup", {"name": "g"}))["inventory"]
    bad_rules = [
        {"type": "Ingress", "protocol": "TCP"},
        {"type": "Ingress", "protocol": "UDP", "startPort": 10, "endPort": 5},
        {"type": "Egress", "protocol": "ICMP", "startPort": 1, "endPort": 1},
        {"type": "Ingress", "protocol": "ALL", "allowedCidr": "10.0.0.300/8"},
        {
            "type": "Ingress",
            "protocol": "ALL",
            "allowedCidr": "10.0.0.0/8",
            "remoteSecurityGroupUuid": group["uuid"],
        },
    ]
    for rule in bad_rules:
        with pytest.raises(RingstackError) as err:
            await client.api("AddSecurityGroupRule", {"securityGroupUuid": group["uuid"], "rules": [rule]})
        assert err.value.code == Sys.INVALID_ARGUMENT, rule
    vm = (await client.api("CreateVmInstance", vm_request(zone)))["inventory"]
    with pytest.raises(RingstackError) as err:  # the group is not attached to the NIC's L3
        await client.api(
            "AddVmNicToSecurityGroup",
            {"securityGroupUuid": group["uuid"], "vmNicUuids": [vm["vmNics"][0]["uuid"]]},
        )
    assert err.value.code == "SECURITYGROUP.L3_NOT_ATTACHED"
    with pytest.raises(RingstackError) as err:
        await client.api(
            "AddSecurityGroupRule",
            {
                "securityGroupUuid": group["uuid"],
                "rules": [{"type": "Ingress", "protocol": "ALL", "remoteSecurityGroupUuid": "e" * 32}],
            },
        )
    assert err.value.code == Sys.NOT_FOUND
    assert (await client.api("QuerySecurityGroup", {}))["inventories"][0]["rules"] == []


async def test_disabled_plugin_leaves_every_vm_operation_working_and_pushes_nothing(
    node_config, client, simulator, tmp_path
):
    from mgmt.node import ManagementNode

    config = node_config.model_copy(update={"disabled_services": ["securitygroup"]})
    node = ManagementNode(config)
    await node.start()
    try:
        assert "securitygroup" not in [s.name for s in node.services]
        z = await build_zone(client, tmp_path, hosts=2)
        nfs = await _nfs(client, z)
        vm = (await client.api("CreateVmInstance", vm_request(z, primaryStorageUuidForRootVolume=nfs)))[
            "inventory"
        ]
        await client.api("StopVmInstance", {"uuid": vm["uuid"]})
        vm = (await client.api("StartVmInstance", {"uuid": vm["uuid"]}))["inventory"]
        await client.api("RebootVmInstance", {"uuid": vm["uuid"]})
        target = next(h for h in z.hosts if h != vm["hostUuid"])
        moved = (await client.api("MigrateVm", {"vmInstanceUuid": vm["uuid"], "hostUuid": target}))[
            "inventory"
        ]
        assert moved["hostUuid"] == target and moved["state"] == "Running"
        await client.api("DestroyVmInstance", {"uuid": vm["uuid"]})
        await client.api("ExpungeVmInstance", {"uuid": vm["uuid"]})
        with pytest.raises(RingstackError) as err:
            await client.api("CreateSecurityGroup", {"name": "g"})
        assert err.value.code == Sys.UNKNOWN_MESSAGE
        for host in simulator.hosts.values():
            assert not [c for c in host.calls if c.startswith("agent.securitygroup")]
    finally:
        await node.stop()


def test_migration_0012_matches_the_models_and_downgrades_to_0013():
    from alembic import command

    name = infra.unique("rs_sgmig_")
    url = infra.create_database(name)
    try:
        migrate.upgrade(url, "0012")
        assert infra.schema_diffs(url, SG_TABLES) == []
        command.downgrade(migrate.alembic_config(url), "0013")
        diffs = infra.schema_diffs(url, SG_TABLES)
        assert {d[1].name for d in diffs if d[0] == "add_table"} == SG_TABLES
    finally:
        infra.drop_database(name)
