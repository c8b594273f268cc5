"""The VirtualRouter network service provider through the public API, on simulated hosts and
simulated VRs (the simulator boots a VR agent when an appliance VM starts): the VR made on a guest
L3's first VM (one, even when creates race), the NIC's DHCP entry, SNAT and DNS pushed, removed
on destroy; every step of the VR's creation failing leaves nothing; port forwarding; tracking."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import func, select

from bus.errors import RingstackError
from schema.db.network import VIRTUAL_ROUTER_PROVIDER_UUID, UsedIp
from schema.db.vm import VmInstance, VmNic, Volume
from schema.db.vrouter import VirtualRouterVm
from tests.support.cluster import until
from tests.support.zone import SimZone, add_vr_offering, build_zone, vm_request

GUEST_GATEWAY = "10.20.0.1"
SERVICES = ["DHCP", "DNS", "SNAT", "PortForwarding", "EIP"]


async def vr_zone(client, tmp_path, *, hosts: int = 1) -> SimZone:  # type: ignore[no-untyped-def]
    """A zone with a guest L3 (10.20.0.0/22) taking DHCP, DNS, SNAT and port forwarding from the
    VirtualRouter provider, a public L3, a management L3 and a default VR offering."""
    z = await build_zone(client, tmp_path, hosts=hosts, host_cpu=32, host_memory=64 << 30)
    api = client.api
    await add_vr_offering(client, z)
    await api("AddDnsToL3Network", {"l3NetworkUuid": z.l3, "dns": "198.51.100.53"})
    await api(
        "AttachNetworkServiceToL3Network",
        {"l3NetworkUuid": z.l3, "networkServices": {VIRTUAL_ROUTER_PROVIDER_UUID: SERVICES}},
    )
    return z


@pytest.fixture
async def zone(node, client, simulator, tmp_path):
    return await vr_zone(client, tmp_path)


async def vrs(client) -> list[dict]:  # type: ignore[no-untyped-def]
    return (await client.api("QueryVirtualRouterVm", {}))["inventories"]


async def leftovers(node) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """What a rolled-back VR create must not leave: rows of VRs, appliance VMs and their NICs,
    volumes and IPs."""

    def count(session) -> dict[str, int]:  # type: ignore[no-untyped-def]
        def n(stmt) -> int:  # type: ignore[no-untyped-def]
            return session.scalar(select(func.count()).select_from(stmt.subquery())) or 0

        return {
            "vrs": n(select(VirtualRouterVm.uuid)),
            "vms": n(select(VmInstance.uuid)),
            "nics": n(select(VmNic.uuid)),
            "volumes": n(select(Volume.uuid)),
            "ips": n(select(UsedIp.uuid).where(UsedIp.used_for_uuid.in_(select(VmNic.uuid)))),
            "orphan_ips": n(
                select(UsedIp.uuid).where(
                    UsedIp.used_for_uuid.is_not(None),
                    UsedIp.used_for_uuid.not_in(select(VmNic.uuid)),
                    UsedIp.used_for_uuid != UsedIp.l3_network_uuid,
                )
            ),
        }

    return await node.db.run(count)


async def test_the_first_vm_gets_a_vr_and_its_nic_is_served(zone, client, simulator):
    api = client.api
    vm = (await api("CreateVmInstance", vm_request(zone, "web")))["inventory"]
    nic = vm["vmNics"][0]
    [vr] = await vrs(client)
    assert vr["status"] == "Connected" and vr["guestL3NetworkUuid"] == zone.l3
    assert vr["guestIp"] == GUEST_GATEWAY and vr["publicIp"].startswith("198.51.100.")
    # The appliance is a VM made by the normal chain: three NICs, the guest one is the gateway.
    appliance = (
        await api("QueryVmInstance", {"conditions": [{"name": "uuid", "op": "=", "value": vr["uuid"]}]})
    )["inventories"][0]
    assert appliance["state"] == "Running"
    by_l3 = {n["l3NetworkUuid"]: n["ip"] for n in appliance["vmNics"]}
    assert by_l3 == {
        zone.extra["mgmt"]: by_l3[zone.extra["mgmt"]],
        zone.extra["public"]: vr["publicIp"],
        zone.l3: GUEST_GATEWAY,
    }
    # The simulated VR holds the VM's DHCP entry, SNAT of the guest CIDR as the VR's public IP, DNS.
    state = simulator.vrouters[vr["uuid"]].state
    assert [(str(d.mac), str(d.ip)) for d in state.dhcp] == [(nic["mac"], nic["ip"])]
    assert [(str(s.guest_cidr), str(s.public_ip)) for s in state.snats] == [("10.20.0.0/22", vr["publicIp"])]
    assert [str(s) for s in state.dns.servers] == ["198.51.100.53"]
    nics = {n.role: str(n.address) for n in simulator.vrouters[vr["uuid"]].nics.values()}
    assert nics["Guest"] == f"{GUEST_GATEWAY}/22"
    # The L3's DNS changes reach the VR at once.
    await api("AddDnsToL3Network", {"l3NetworkUuid": zone.l3, "dns": "198.51.100.54"})

    async def dns_is(*servers: str) -> bool:
        return [str(s) for s in simulator.vrouters[vr["uuid"]].state.dns.servers] == list(servers)

    await until(lambda: dns_is("198.51.100.53", "198.51.100.54"), 10, "the new DNS server on the VR")
    await api("RemoveDnsFromL3Network", {"l3NetworkUuid": zone.l3, "dns": "198.51.100.53"})
    await until(lambda: dns_is("198.51.100.54"), 10, "the old DNS server gone from the VR")
    # A second VM reuses the VR.
    second = (await api("CreateVmInstance", vm_request(zone, "db")))["inventory"]
    assert len(await vrs(client)) == 1
    assert len(simulator.vrouters[vr["uuid"]].state.dhcp) == 2
    # Tenants do not see the appliance among VMs.
    tenant = await client.new_account("vr-viewer")
    seen = (await tenant.api("QueryVmInstance", {}))["inventories"]
    assert vr["uuid"] not in {v["uuid"] for v in seen}
    # Destroying a VM takes its entry off the VR.
    await api("DestroyVmInstance", {"uuid": second["uuid"]})
    await until(
        lambda: asyncio.sleep(0, len(simulator.vrouters[vr["uuid"]].state.dhcp) == 1), 10, "the entry removed"
    )
    assert str(simulator.vrouters[vr["uuid"]].state.dhcp[0].mac) == nic["mac"]
    await api("RecoverVmInstance", {"uuid": second["uuid"]})
    await until(
        lambda: asyncio.sleep(0, len(simulator.vrouters[vr["uuid"]].state.dhcp) == 2), 10, "the entry back"
    )


async def test_concurrent_first_creates_make_one_vr(zone, client, simulator):
    api = client.api
    created = await asyncio.gather(
        *(api("CreateVmInstance", vm_request(zone, f"vm-{i}"), timeout=60) for i in range(8))
    )
    [vr] = await vrs(client)
    macs = sorted(c["inventory"]["vmNics"][0]["mac"] for c in created)
    assert sorted(str(d.mac) for d in simulator.vrouters[vr["uuid"]].state.dhcp) == macs
    assert [u for u in simulator.vrouters] == [vr["uuid"]]


# Each step of a VR's creation, failed by the simulator: (target, command).
STEPS = [
    ("*", "agent.volume.create"),
    ("*", "agent.vm.start"),
    ("appliances", "agent.connect"),
    ("appliances", "vrouter.configure_nics"),
    ("appliances", "vrouter.sync"),
]


@pytest.mark.parametrize(("target", "command"), STEPS, ids=[c for _, c in STEPS])
async def test_a_failure_at_any_step_of_the_vr_create_leaves_nothing(
    zone, client, simulator, node, target, command
):
    api = client.api
    before = await leftovers(node)
    await client.call(
        simulator.control_queue.name,
        "simulator.configure",
        {"hostUuid": target, "command": command, "fault": {"failAlways": True}},
    )
    with pytest.raises(RingstackError) as err:
        await api("CreateVmInstance", vm_request(zone, "doomed"), timeout=60)
    assert "INJECTED_FAILURE" in err.value.code or "INJECTED_FAILURE" in str(err.value)
    assert await vrs(client) == []
    assert await leftovers(node) == before
    host = simulator.hosts[zone.hosts[0]]
    # What the rollback sent may still be retried by the garbage collector: await it.
    await until(lambda: asyncio.sleep(0, not host.vms and not host.volumes), 20, "the host emptied")
    assert simulator.vrouters == {}
    # Healed, the same request works and makes exactly one VR.
    await client.call(
        simulator.control_queue.name,
        "simulator.configure",
        {"hostUuid": target, "command": command, "fault": None},
    )
    await api("CreateVmInstance", vm_request(zone, "fine"), timeout=60)
    assert len(await vrs(client)) == 1


async def test_a_failing_push_to_an_existing_vr_rolls_the_vm_back_and_keeps_the_vr(
    zone, client, simulator, node
):
    api = client.api
    await api("CreateVmInstance", vm_request(zone, "first"))
    [vr] = await vrs(client)
    await client.call(
        simulator.control_queue.name,
        "simulator.configure",
        {"hostUuid": vr["uuid"], "command": "vrouter.dhcp.add", "fault": {"failAlways": True}},
    )
    with pytest.raises(RingstackError):
        await api("CreateVmInstance", vm_request(zone, "second"))
    names = {v["name"] for v in (await api("QueryVmInstance", {}))["inventories"]}
    assert "second" not in names
    assert len(simulator.vrouters[vr["uuid"]].state.dhcp) == 1
    assert [v["status"] for v in await vrs(client)] == ["Connected"]


async def test_port_forwarding_rules_through_the_vr(zone, client, simulator):
    api = client.api
    vm = (await api("CreateVmInstance", vm_request(zone, "web")))["inventory"]
    nic = vm["vmNics"][0]
    [vr] = await vrs(client)
    sim = simulator.vrouters[vr["uuid"]]
    vip = (await api("CreateVip", {"name": "v", "l3NetworkUuid": zone.extra["public"]}))["inventory"]
    rule = (
        await api(
            "CreatePortForwardingRule",
            {
                "name": "http",
                "vipUuid": vip["uuid"],
                "vipPortStart": 8080,
                "vipPortEnd": 8081,
                "privatePortStart": 80,
                "protocolType": "TCP",
                "allowedCidr": "203.0.113.0/24",
                "vmNicUuid": nic["uuid"],
            },
        )
    )["inventory"]
    assert (rule["privatePortEnd"], rule["guestIp"], rule["vmNicUuid"]) == (81, nic["ip"], nic["uuid"])
    [pf] = sim.state.port_forwardings
    assert (str(pf.vip_ip), pf.vip_port_start, pf.private_port_end, str(pf.allowed_cidr)) == (
        vip["ip"], 8080, 81, "203.0.113.0/24",
    )  # fmt: skip
    assert [str(v.ip) for v in sim.state.vips] == [vip["ip"]]
    found = (await api("QueryVip", {"conditions": [{"name": "uuid", "op": "=", "value": vip["uuid"]}]}))[
        "inventories"
    ]
    assert found[0]["useFor"] == "PortForwarding"
    # Overlapping ports of the same VIP and protocol are refused; UDP on the same ports is fine.
    base = {"name": "x", "vipUuid": vip["uuid"], "vipPortStart": 8081, "protocolType": "TCP"}
    with pytest.raises(RingstackError) as err:
        await api("CreatePortForwardingRule", base)
    assert err.value.code == "VROUTER.PORT_FORWARDING_CONFLICT"
    udp = (await api("CreatePortForwardingRule", {**base, "protocolType": "UDP"}))["inventory"]
    assert udp.get("vmNicUuid") is None and len(sim.state.port_forwardings) == 1
    await api("AttachPortForwardingRule", {"ruleUuid": udp["uuid"], "vmNicUuid": nic["uuid"]})
    assert len(sim.state.port_forwardings) == 2
    # Bad input is refused before anything runs.
    with pytest.raises(RingstackError) as err:
        await api(
            "CreatePortForwardingRule",
            {**base, "vipPortStart": 10, "vipPortEnd": 20, "privatePortStart": 30, "privatePortEnd": 31},
        )
    assert err.value.code == "SYS.INVALID_ARGUMENT"
    # Detach takes it off the VR; the VIP stays while another rule uses it.
    await api("DetachPortForwardingRule", {"uuid": rule["uuid"]})
    assert [p.uuid for p in sim.state.port_forwardings] == [udp["uuid"]]
    assert len(sim.state.vips) == 1
    await api("DeletePortForwardingRule", {"uuid": udp["uuid"]})
    assert sim.state.port_forwardings == [] and sim.state.vips == []
    await api("DeletePortForwardingRule", {"uuid": rule["uuid"]})
    found = (await api("QueryVip", {"conditions": [{"name": "uuid", "op": "=", "value": vip["uuid"]}]}))[
        "inventories"
    ]
    assert found[0].get("useFor") is None
    assert (await api("QueryPortForwardingRule", {}))["inventories"] == []
    # A destroyed VM loses its rules (and the VR drops them).
    again = (await api("CreatePortForwardingRule", {**base, "vmNicUuid": nic["uuid"]}))["inventory"]
    assert len(sim.state.port_forwardings) == 1
    await api("DestroyVmInstance", {"uuid": vm["uuid"]})
    await until(lambda: asyncio.sleep(0, sim.state.port_forwardings == []), 10, "the rule dropped")
    rows = (await api("QueryPortForwardingRule", {}))["inventories"]
    assert [(r["uuid"], r.get("vmNicUuid")) for r in rows] == [(again["uuid"], None)]


async def test_a_rebooted_vr_gets_its_whole_state_back_and_reconnect_resyncs(zone, client, simulator, node):
    api = client.api
    vm = (await api("CreateVmInstance", vm_request(zone, "web")))["inventory"]
    [vr] = await vrs(client)
    vip = (await api("CreateVip", {"name": "v", "l3NetworkUuid": zone.extra["public"]}))["inventory"]
    await api(
        "CreatePortForwardingRule",
        {"name": "ssh", "vipUuid": vip["uuid"], "vipPortStart": 2222, "privatePortStart": 22,
         "protocolType": "TCP", "vmNicUuid": vm["vmNics"][0]["uuid"]},
    )  # fmt: skip
    want = simulator.vrouters[vr["uuid"]].state
    assert want.dhcp and want.snats and want.port_forwardings
    service = next(s for s in node.services if s.name == "vrouter")
    await service.check_all()  # the tracker's baseline uptime
    # The appliance reboots: its agent comes back with nothing; the tracker notices and re-syncs.
    await api("RebootVmInstance", {"uuid": vr["uuid"]})
    assert simulator.vrouters[vr["uuid"]].state.dhcp == []

    async def restored() -> bool:
        await service.check_all()
        return vr["uuid"] in simulator.vrouters and simulator.vrouters[vr["uuid"]].state == want

    await until(restored, 20, "the rebooted VR's state restored")
    # Rules lost behind our back come back with ReconnectVirtualRouter.
    simulator.vrouters[vr["uuid"]].state = type(want)()
    inv = (await api("ReconnectVirtualRouter", {"vmInstanceUuid": vr["uuid"]}))["inventory"]
    assert inv["status"] == "Connected"
    assert simulator.vrouters[vr["uuid"]].state == want


SERVICE_TABLES = {"virtual_router_vm", "port_forwarding_rule"}


def test_the_vrouter_services_migration_matches_the_models_and_downgrades():
    from alembic import command

    from mgmt.core import migrate
    from tests.support import infra

    name = infra.unique("rs_vrsvc_")
    url = infra.create_database(name)
    try:
        migrate.upgrade(url, "0015")
        assert infra.schema_diffs(url, SERVICE_TABLES) == []
        command.downgrade(migrate.alembic_config(url), "-1")
        added = {d[1].name for d in infra.schema_diffs(url, SERVICE_TABLES) if d[0] == "add_table"}
        assert added == SERVICE_TABLES
        migrate.upgrade(url, "0015")
        assert infra.schema_diffs(url, SERVICE_TABLES) == []
    finally:
        infra.drop_database(name)


async def test_the_readme_cli_session(
    zone, client, simulator, namespace, broker_url, database_url, tmp_path, monkeypatch
):
    """The README's session, through the ``ringstack`` CLI (in this process)."""
    import orjson
    from click.testing import CliRunner

    from mgmt.cli import client as cli_client
    from tests.support.procs import node_env

    env = {**node_env(database_url, namespace, broker_url), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(cli_client, "_catalog", None)
    session = await client.admin_session()

    def cli(*args: str) -> object:
        result = CliRunner().invoke(
            cli_client.cli,
            ["--session", session, *args, "-f", "json"],
            prog_name="ringstack",
            standalone_mode=False,
        )
        assert result.exit_code in (0, None), (args, result.output, result.exception)
        reply = orjson.loads(result.output) if result.output.strip() else {}
        return reply.get("inventories", reply.get("inventory", reply))

    async def run(*args: str) -> object:
        return await asyncio.to_thread(cli, *args)

    vm = (await client.api("CreateVmInstance", vm_request(zone, "web")))["inventory"]
    [vr] = await run("QueryVirtualRouterVm", "-c", "uuid", "-c", "status", "-c", "publicIp", "-c", "guestIp")
    assert vr["status"] == "Connected" and vr["guestIp"] == GUEST_GATEWAY
    vip = await run(
        "CreateVip", "name=web", f"l3NetworkUuid={zone.extra['public']}", "requiredIp=198.51.100.10"
    )
    rule = await run(
        "CreatePortForwardingRule", "name=http", f"vipUuid={vip['uuid']}", "vipPortStart=8080", "vipPortEnd=8081",
        "privatePortStart=80", "protocolType=TCP", "allowedCidr=198.51.100.0/24", f"vmNicUuid={vm['vmNics'][0]['uuid']}",
    )  # fmt: skip
    assert (rule["privatePortEnd"], rule["guestIp"]) == (81, vm["vmNics"][0]["ip"])
    [used] = await run("QueryVip", "-c", "uuid", "-c", "ip", "-c", "useFor")
    assert used["useFor"] == "PortForwarding"
    assert len(simulator.vrouters[vr["uuid"]].state.port_forwardings) == 1
    await run("DetachPortForwardingRule", f"uuid={rule['uuid']}")
    assert simulator.vrouters[vr["uuid"]].state.port_forwardings == []
    await run("AttachPortForwardingRule", f"ruleUuid={rule['uuid']}", f"vmNicUuid={vm['vmNics'][0]['uuid']}")
    assert len(simulator.vrouters[vr["uuid"]].state.port_forwardings) == 1
    await run("DeletePortForwardingRule", f"uuid={rule['uuid']}")
    second = await run("CreateVip", "name=db", f"l3NetworkUuid={zone.extra['public']}")
    eip = await run(
        "CreateEip", "name=db", f"vipUuid={second['uuid']}", f"vmNicUuid={vm['vmNics'][0]['uuid']}"
    )
    eips = simulator.vrouters[vr["uuid"]].state.eips
    assert [(str(e.vip_ip), str(e.guest_ip)) for e in eips] == [(second["ip"], vm["vmNics"][0]["ip"])]
    await run("DetachEip", f"uuid={eip['uuid']}")
    assert simulator.vrouters[vr["uuid"]].state.eips == []
    reconnected = await run("ReconnectVirtualRouter", f"vmInstanceUuid={vr['uuid']}")
    assert reconnected["status"] == "Connected"
    assert simulator.vrouters[vr["uuid"]].state.port_forwardings == []


async def test_a_destroyed_vr_is_replaced_by_the_next_vm_create(zone, client, simulator):
    api = client.api
    await api("CreateVmInstance", vm_request(zone, "first"))
    [old] = await vrs(client)
    await api("DestroyVmInstance", {"uuid": old["uuid"]})
    assert old["uuid"] not in simulator.vrouters
    second = (await api("CreateVmInstance", vm_request(zone, "second"), timeout=60))["inventory"]
    [new] = await vrs(client)
    assert new["uuid"] != old["uuid"] and new["status"] == "Connected"
    # The new VR has every live NIC of the L3, the first VM's included.
    assert len(simulator.vrouters[new["uuid"]].state.dhcp) == 2
    assert second["vmNics"][0]["mac"] in {str(d.mac) for d in simulator.vrouters[new["uuid"]].state.dhcp}


async def test_first_creates_racing_across_three_nodes_make_one_vr(
    database_url, namespace, broker_url, client, tmp_path
):
    """Three node processes and a simulator process: 30 concurrent first VM creates of one guest
    L3, spread over the nodes by the API queue, make exactly one VR, which serves all 30 NICs."""
    from tests.support.cluster import ClusterOfProcesses
    from tests.support.simulator import SimulatorProcess

    sim = SimulatorProcess(broker_url, namespace).wait_ready()
    cluster = ClusterOfProcesses(
        database_url, namespace, broker_url, agent_timeout="30", heartbeat_interval="1", lease_ttl="2.5"
    )
    try:
        await asyncio.to_thread(cluster.start, 3)
        z = await vr_zone(client, tmp_path, hosts=2)
        results = await asyncio.gather(
            *(client.api("CreateVmInstance", vm_request(z, f"vm{i}"), timeout=180) for i in range(30))
        )
        assert all(r["inventory"]["state"] == "Running" for r in results)
        [(vr_uuid, status)] = cluster.sql("SELECT uuid, status FROM virtual_router_vm")
        assert status == "Connected"
        appliances = cluster.sql("SELECT count(*) FROM vm_instance WHERE name LIKE 'vrouter-%%'")
        assert appliances == [(1,)]
        inventory = await client.call(f"{namespace}.simulator", "simulator.inventory", {}, timeout=30)
        assert list(inventory["vrouters"]) == [vr_uuid]
        assert inventory["vrouters"][vr_uuid]["counts"]["dhcpEntries"] == 30
    finally:
        cluster.close()
        sim.close()


async def test_a_stale_entry_holding_the_new_address_is_cleared_by_a_full_sync(zone, client, simulator):
    """An entry left on the VR (a rolled-back create whose removal was missed) holds the address
    IPAM gives the next VM: the agent refuses the duplicate, and the provider syncs the VR whole
    from the database instead of failing the create."""
    from ipaddress import IPv4Network

    from schema import vrouter as vr_schema

    api = client.api
    first = (await api("CreateVmInstance", vm_request(zone, "first")))["inventory"]
    [vr] = await vrs(client)
    sim = simulator.vrouters[vr["uuid"]]
    taken = {str(d.ip) for d in sim.state.dhcp} | {GUEST_GATEWAY}
    stale = [
        vr_schema.DhcpEntry(mac=f"02:ee:00:00:{i >> 8:02x}:{i & 255:02x}", ip=ip)  # type: ignore[arg-type]
        for i, ip in enumerate(str(a) for a in IPv4Network("10.20.0.0/22").hosts() if str(a) not in taken)
    ]
    sim.state = sim.state.model_copy(update={"dhcp": [*sim.state.dhcp, *stale]})
    second = (await api("CreateVmInstance", vm_request(zone, "second")))["inventory"]
    macs = sorted(str(d.mac) for d in sim.state.dhcp)
    assert macs == sorted([first["vmNics"][0]["mac"], second["vmNics"][0]["mac"]])


async def test_a_stopped_vr_is_started_again_and_gets_its_state_back(zone, client, simulator, node):
    api = client.api
    await api("CreateVmInstance", vm_request(zone, "web"))
    [vr] = await vrs(client)
    want = simulator.vrouters[vr["uuid"]].state
    service = next(s for s in node.services if s.name == "vrouter")
    await api("StopVmInstance", {"uuid": vr["uuid"], "type": "cold"})
    assert vr["uuid"] not in simulator.vrouters

    async def back() -> bool:  # each round: one ping (missed while it is down), then the restart
        await service.check_all()
        sim = simulator.vrouters.get(vr["uuid"])
        return sim is not None and sim.state == want

    await until(back, 90, "the stopped VR started and re-synced")
    [again] = await vrs(client)
    assert again["state"] == "Running"
