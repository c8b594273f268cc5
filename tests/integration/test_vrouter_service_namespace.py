"""The VirtualRouter provider with the real VR agent and real packets, driven through the public API
only: the management side creates the VR appliance (on a simulated host, which boots no agent for
it), the real agent process plays the booted appliance in a network namespace (tests/support/
vrlab.py) with the appliance VM's NIC MACs; the management side then configures it and syncs it.
A guest namespace with the user VM's MAC gets IPAM's address by DHCP and leaves through SNAT; an
outside namespace reaches it through port forwarding (TCP and UDP, allowed CIDR enforced)
and an EIP (detached: unreachable, and the guest leaves as the VR's address again)."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import select

from schema.db.network import VIRTUAL_ROUTER_PROVIDER_UUID
from schema.db.vm import VmNic
from schema.db.vrouter import VirtualRouterVm
from tests.support.cluster import until
from tests.support.vrlab import OUTSIDE_2, PUBLIC_GW, VrLab
from tests.support.zone import build_zone, vm_request


@pytest.fixture
async def lab(tmp_path, namespace, broker_url):
    lab = VrLab(tmp_path, namespace, broker_url)
    try:
        await asyncio.to_thread(lab.build)
        yield lab
    finally:
        await lab.close()


async def vr_zone(client, tmp_path):  # type: ignore[no-untyped-def]
    """Guest L3 10.9.0.0/24 (gateway 10.9.0.1: the lab's guest side), public L3 203.0.113.0/24
    with the outside namespace (.254) as its gateway; the offering's management network is the
    public one, so the appliance has two NICs, as the lab's VR namespace has."""
    z = await build_zone(client, tmp_path, hosts=1, cidr="10.9.0.0/24")
    api = client.api
    public = (await api("CreateL3Network", {"l2NetworkUuid": z.l2, "name": "public", "category": "Public"}))[
        "inventory"
    ]["uuid"]
    await api(
        "AddIpRange",
        {
            "l3NetworkUuid": public,
            "name": "pub",
            "startIp": "203.0.113.1",
            "endIp": "203.0.113.100",
            "netmask": "255.255.255.0",
            "gateway": PUBLIC_GW,
        },
    )
    await api(
        "AttachNetworkServiceToL3Network",
        {
            "l3NetworkUuid": z.l3,
            "networkServices": {
                VIRTUAL_ROUTER_PROVIDER_UUID: ["DHCP", "DNS", "SNAT", "PortForwarding", "EIP"]
            },
        },
    )
    await api(
        "CreateVirtualRouterOffering",
        {
            "name": "vr",
            "zoneUuid": z.zone,
            "imageUuid": z.image,
            "managementNetworkUuid": public,
            "publicNetworkUuid": public,
            "cpuNum": 1,
            "memorySize": 256 << 20,
            "isDefault": True,
        },
    )
    z.extra["public"] = public
    return z


async def boot_appliance(node, lab: VrLab) -> str:  # type: ignore[no-untyped-def]
    """Once the management side has made the appliance VM: give the lab's VR namespace its NICs'
    MACs and start the real agent as that VR (what the appliance's boot does)."""

    def appliance(session):  # type: ignore[no-untyped-def]
        vr = session.scalar(select(VirtualRouterVm))
        if vr is None or vr.public_ip is None:
            return None
        nics = {
            n.l3_network_uuid: n.mac
            for n in session.scalars(select(VmNic).where(VmNic.vm_instance_uuid == vr.uuid))
        }
        return vr.uuid, nics[vr.public_network_uuid], nics[vr.guest_l3_network_uuid]

    vr_uuid, public_mac, guest_mac = await until(lambda: node.db.run(appliance), 30, "the appliance VM")
    lab.vr.ip("link", "set", "vpub", "address", public_mac)
    lab.vr.ip("link", "set", "vguest", "address", guest_mac)
    lab.vr_uuid = vr_uuid
    await lab.start_agent()
    return vr_uuid


async def test_dhcp_snat_and_port_forwarding_with_the_real_agent(node, client, simulator, lab, tmp_path):
    api = client.api
    await client.call(simulator.control_queue.name, "simulator.configure_appliances", {"boot": False})
    z = await vr_zone(client, tmp_path)
    create = asyncio.create_task(api("CreateVmInstance", vm_request(z, "web"), timeout=120))
    vr_uuid = await boot_appliance(node, lab)
    vm = (await create)["inventory"]
    nic = vm["vmNics"][0]
    [vr] = (await api("QueryVirtualRouterVm", {}))["inventories"]
    assert (vr["uuid"], vr["status"], vr["guestIp"]) == (vr_uuid, "Connected", "10.9.0.1")

    # DHCP from the VR's dnsmasq gives the guest IPAM's address, the VR as router and DNS.
    guest = lab.add_guest(nic["mac"])
    lease = await asyncio.to_thread(lab.dhcp, guest)
    assert (lease["ip"], lease["router"], lease["dns"].split()) == (nic["ip"], "10.9.0.1", ["10.9.0.1"])

    outside = lab.serve(lab.outside, "outside", "tcp", 8080)
    web = lab.serve(guest, "web", "tcp", 80, 81)
    dns = lab.serve(guest, "dns", "udp", 5353)
    try:
        # SNAT: the guest reaches the outside, which sees the VR's public IP.
        seen = await asyncio.to_thread(lab.call, guest, "tcp", PUBLIC_GW, 8080)
        assert seen == f"outside {vr['publicIp']}"

        # Port forwarding through the API: VIP 8080-8081/TCP -> 80-81 for the outside's .254 only,
        # and 5353/UDP from anywhere.
        vip = (await api("CreateVip", {"name": "v", "l3NetworkUuid": z.extra["public"]}))["inventory"]
        tcp = {
            "name": "web",
            "vipUuid": vip["uuid"],
            "vipPortStart": 8080,
            "vipPortEnd": 8081,
            "privatePortStart": 80,
            "protocolType": "TCP",
            "allowedCidr": f"{PUBLIC_GW}/32",
            "vmNicUuid": nic["uuid"],
        }
        rule = (await api("CreatePortForwardingRule", tcp))["inventory"]
        udp = {"name": "dns", "vipUuid": vip["uuid"], "vipPortStart": 5353, "protocolType": "UDP"}
        udp_rule = (await api("CreatePortForwardingRule", udp))["inventory"]
        await api("AttachPortForwardingRule", {"ruleUuid": udp_rule["uuid"], "vmNicUuid": nic["uuid"]})
        for port in (8080, 8081):
            answer = await asyncio.to_thread(lab.call, lab.outside, "tcp", vip["ip"], port, source=PUBLIC_GW)
            assert answer == f"web {PUBLIC_GW}"
        answer = await asyncio.to_thread(lab.call, lab.outside, "udp", vip["ip"], 5353, source=OUTSIDE_2)
        assert answer == f"dns {OUTSIDE_2}"
        # The allowed CIDR is enforced: .253 does not get through on TCP.
        blocked = await asyncio.to_thread(
            lab.call, lab.outside, "tcp", vip["ip"], 8080, source=OUTSIDE_2, timeout=1
        )
        assert blocked is None
        # Detached: unreachable; deleted, the VIP is free again.
        await api("DetachPortForwardingRule", {"uuid": rule["uuid"]})
        gone = await asyncio.to_thread(
            lab.call, lab.outside, "tcp", vip["ip"], 8080, source=PUBLIC_GW, timeout=1
        )
        assert gone is None
        answer = await asyncio.to_thread(lab.call, lab.outside, "udp", vip["ip"], 5353, source=OUTSIDE_2)
        assert answer == f"dns {OUTSIDE_2}"
        for r in (rule, udp_rule):
            await api("DeletePortForwardingRule", {"uuid": r["uuid"]})
        gone = await asyncio.to_thread(
            lab.call, lab.outside, "udp", vip["ip"], 5353, source=OUTSIDE_2, timeout=1
        )
        assert gone is None

        # EIP through the API: the outside reaches the guest on the EIP, the guest leaves as it.
        eip_vip = (await api("CreateVip", {"name": "e", "l3NetworkUuid": z.extra["public"]}))["inventory"]
        eip = (await api("CreateEip", {"name": "e", "vipUuid": eip_vip["uuid"], "vmNicUuid": nic["uuid"]}))[
            "inventory"
        ]
        answer = await asyncio.to_thread(lab.call, lab.outside, "tcp", eip_vip["ip"], 80, source=OUTSIDE_2)
        assert answer == f"web {OUTSIDE_2}"
        seen = await asyncio.to_thread(lab.call, guest, "tcp", PUBLIC_GW, 8080)
        assert seen == f"outside {eip_vip['ip']}"
        await api("DetachEip", {"uuid": eip["uuid"]})
        gone = await asyncio.to_thread(lab.call, lab.outside, "tcp", eip_vip["ip"], 80, timeout=1)
        assert gone is None
        seen = await asyncio.to_thread(lab.call, guest, "tcp", PUBLIC_GW, 8080)
        assert seen == f"outside {vr['publicIp']}"
        await api("AttachEip", {"eipUuid": eip["uuid"], "vmNicUuid": nic["uuid"]})

        # The agent is killed and started again: ReconnectVirtualRouter pushes the whole state
        # again and the EIP works as before.
        lab.kill_agent()
        await lab.start_agent()
        inv = (await api("ReconnectVirtualRouter", {"vmInstanceUuid": vr_uuid}, timeout=60))["inventory"]
        assert inv["status"] == "Connected"
        answer = await asyncio.to_thread(lab.call, lab.outside, "tcp", eip_vip["ip"], 81, source=OUTSIDE_2)
        assert answer == f"web {OUTSIDE_2}"
    finally:
        for proc in (outside, web, dns):
            proc.kill()
