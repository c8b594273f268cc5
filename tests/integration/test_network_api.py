"""L2 and L3 networks, IP ranges, DNS and network services through the public API, on the real
broker and database. IP allocation itself is tested in test_ipam.py."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bus.errors import RingstackError, Sys
from schema.db.network import FLAT_PROVIDER_UUID, SECURITY_GROUP_PROVIDER_UUID, VIRTUAL_ROUTER_PROVIDER_UUID

VR, FLAT, SG = VIRTUAL_ROUTER_PROVIDER_UUID, FLAT_PROVIDER_UUID, SECURITY_GROUP_PROVIDER_UUID
UNKNOWN = "f" * 32


# ---------------------------------------------------------------- helpers


async def make_zone(client, name: str = "z") -> str:
    return (await client.api("CreateZone", {"name": name}))["inventory"]["uuid"]


async def make_cluster(client, zone: str, name: str = "c") -> str:
    body = {"zoneUuid": zone, "name": name, "hypervisorType": "KVM"}
    return (await client.api("CreateCluster", body))["inventory"]["uuid"]


async def make_l2(client, zone: str, interface: str = "eth0", vlan: int | None = None, **extra: Any) -> dict:
    body = {"zoneUuid": zone, "name": f"l2-{interface}-{vlan}", "physicalInterface": interface, **extra}
    if vlan is None:
        return (await client.api("CreateL2NoVlanNetwork", body))["inventory"]
    return (await client.api("CreateL2VlanNetwork", {**body, "vlan": vlan}))["inventory"]


async def make_l3(client, l2: str, name: str = "l3", **extra: Any) -> dict:
    return (await client.api("CreateL3Network", {"l2NetworkUuid": l2, "name": name, **extra}))["inventory"]


async def add_range(
    client, l3: str, start: str, end: str, gateway: str = "10.0.0.1", netmask: str = "255.255.255.0"
):
    body = {
        "l3NetworkUuid": l3,
        "name": "r",
        "startIp": start,
        "endIp": end,
        "netmask": netmask,
        "gateway": gateway,
    }
    return (await client.api("AddIpRange", body))["inventory"]


async def query(client, api: str, **conditions: Any) -> list[dict]:
    conds = [{"name": k, "op": "=", "value": v} for k, v in conditions.items()]
    return (await client.api(api, {"conditions": conds}))["inventories"]


async def l3_of(client, uuid: str) -> dict:
    found = await query(client, "QueryL3Network", uuid=uuid)
    assert len(found) == 1
    return found[0]


async def fails(code: str, call) -> RingstackError:
    with pytest.raises(RingstackError) as err:
        await call
    assert err.value.code == code, err.value
    return err.value


@pytest.fixture
async def net(node, client) -> dict[str, str]:
    """A zone with an untagged L2 network and one L3 network on it."""
    zone = await make_zone(client)
    l2 = (await make_l2(client, zone))["uuid"]
    l3 = (await make_l3(client, l2))["uuid"]
    return {"zone": zone, "l2": l2, "l3": l3}


# ---------------------------------------------------------------- L2


async def test_l2_crud_round_trip(node, client):
    zone = await make_zone(client)
    plain = await make_l2(client, zone, "eth0", description="untagged")
    tagged = await make_l2(client, zone, "eth1", vlan=100)
    assert (plain["type"], plain.get("vlan"), plain["physicalInterface"], plain["zoneUuid"]) == (
        "L2NoVlanNetwork",
        None,
        "eth0",
        zone,
    )
    assert (tagged["type"], tagged["vlan"], plain["attachedClusterUuids"]) == ("L2VlanNetwork", 100, [])
    assert {i["uuid"] for i in await query(client, "QueryL2Network", zoneUuid=zone)} == {
        plain["uuid"],
        tagged["uuid"],
    }
    assert [i["uuid"] for i in await query(client, "QueryL2Network", vlan=100)] == [tagged["uuid"]]

    updated = (await client.api("UpdateL2Network", {"uuid": plain["uuid"], "name": "renamed"}))["inventory"]
    assert (updated["name"], updated["description"]) == ("renamed", "untagged")

    assert await client.api("DeleteL2Network", {"uuid": plain["uuid"]}) == {}
    assert [i["uuid"] for i in (await client.api("QueryL2Network", {}))["inventories"]] == [tagged["uuid"]]
    assert await client.api("DeleteL2Network", {"uuid": plain["uuid"]}) == {}  # a retried delete is safe


# (API, body, the field the error names)
L2_INVALID = [
    ("CreateL2NoVlanNetwork", {"name": "n", "physicalInterface": "eth0"}, "zoneUuid"),
    ("CreateL2NoVlanNetwork", {"zoneUuid": "x", "name": "n", "physicalInterface": "eth0"}, "zoneUuid"),
    ("CreateL2NoVlanNetwork", {"zoneUuid": "a" * 32, "name": "", "physicalInterface": "eth0"}, "name"),
    ("CreateL2NoVlanNetwork", {"zoneUuid": "a" * 32, "name": "n"}, "physicalInterface"),
    (
        "CreateL2NoVlanNetwork",
        {"zoneUuid": "a" * 32, "name": "n", "physicalInterface": "eth 0"},
        "physicalInterface",
    ),
    (
        "CreateL2NoVlanNetwork",
        {"zoneUuid": "a" * 32, "name": "n", "physicalInterface": "e" * 16},
        "physicalInterface",
    ),
    (
        "CreateL2NoVlanNetwork",
        {"zoneUuid": "a" * 32, "name": "n", "physicalInterface": "eth0", "vlan": 5},
        "vlan",
    ),
    ("CreateL2VlanNetwork", {"zoneUuid": "a" * 32, "name": "n", "physicalInterface": "eth0"}, "vlan"),
    (
        "CreateL2VlanNetwork",
        {"zoneUuid": "a" * 32, "name": "n", "physicalInterface": "eth0", "vlan": 0},
        "vlan",
    ),
    (
        "CreateL2VlanNetwork",
        {"zoneUuid": "a" * 32, "name": "n", "physicalInterface": "eth0", "vlan": 4095},
        "vlan",
    ),
    (
        "CreateL2VlanNetwork",
        {"zoneUuid": "a" * 32, "name": "n", "physicalInterface": "eth0", "vlan": "ten"},
        "vlan",
    ),
    ("UpdateL2Network", {"uuid": "nope"}, "uuid"),
    ("DeleteL2Network", {"uuid": "a" * 32, "deleteMode": "Gently"}, "deleteMode"),
    ("AttachL2NetworkToCluster", {"l2NetworkUuid": "a" * 32}, "clusterUuid"),
    ("DetachL2NetworkFromCluster", {"clusterUuid": "a" * 32}, "l2NetworkUuid"),
    ("QueryL2Network", {"limit": -1}, "limit"),
]


async def test_l2_needs_an_existing_zone(node, client):
    err = await fails(Sys.NOT_FOUND, make_l2(client, UNKNOWN))
    assert UNKNOWN in err.message
    await fails(Sys.NOT_FOUND, client.api("UpdateL2Network", {"uuid": UNKNOWN, "name": "x"}))


async def test_vlan_is_unique_per_zone_and_interface(node, client):
    zone, other_zone = await make_zone(client), await make_zone(client, "z2")
    first = await make_l2(client, zone, "eth0", vlan=10)
    err = await fails("L2.VLAN_IN_USE", make_l2(client, zone, "eth0", vlan=10))
    assert first["uuid"] in err.message
    await make_l2(client, zone, "eth0", vlan=11)
    await make_l2(client, zone, "eth1", vlan=10)
    await make_l2(client, other_zone, "eth0", vlan=10)
    await make_l2(client, zone, "eth0")
    assert len((await client.api("QueryL2Network", {}))["inventories"]) == 5


async def test_concurrent_creates_of_one_vlan_yield_exactly_one(node, client):
    zone = await make_zone(client)
    results = await asyncio.gather(
        *(make_l2(client, zone, "eth0", vlan=42) for _ in range(6)), return_exceptions=True
    )
    created = [r for r in results if isinstance(r, dict)]
    refused = [r for r in results if isinstance(r, RingstackError)]
    assert len(created) == 1
    assert {e.code for e in refused} == {"L2.VLAN_IN_USE"}


async def test_attach_and_detach_clusters(node, client):
    zone, far_zone = await make_zone(client), await make_zone(client, "far")
    cluster, cluster2, far = (
        await make_cluster(client, zone, "c1"),
        await make_cluster(client, zone, "c2"),
        await make_cluster(client, far_zone, "far"),
    )
    l2 = (await make_l2(client, zone, "eth0"))["uuid"]
    attach = {"l2NetworkUuid": l2, "clusterUuid": cluster}
    inv = (await client.api("AttachL2NetworkToCluster", attach))["inventory"]
    assert inv["attachedClusterUuids"] == [cluster]
    assert (await client.api("AttachL2NetworkToCluster", attach))["inventory"]["attachedClusterUuids"] == [
        cluster
    ]
    inv = (await client.api("AttachL2NetworkToCluster", {**attach, "clusterUuid": cluster2}))["inventory"]
    assert inv["attachedClusterUuids"] == sorted([cluster, cluster2])
    assert (await query(client, "QueryL2Network", uuid=l2))[0]["attachedClusterUuids"] == sorted(
        [cluster, cluster2]
    )

    err = await fails(
        "L2.CLUSTER_ZONE_MISMATCH", client.api("AttachL2NetworkToCluster", {**attach, "clusterUuid": far})
    )
    assert far_zone in err.message
    await fails(Sys.NOT_FOUND, client.api("AttachL2NetworkToCluster", {**attach, "clusterUuid": UNKNOWN}))
    await fails(Sys.NOT_FOUND, client.api("AttachL2NetworkToCluster", {**attach, "l2NetworkUuid": UNKNOWN}))

    # a second untagged network on the same interface of the same cluster would share its bridge
    twin = (await make_l2(client, zone, "eth0"))["uuid"]
    err = await fails(
        "L2.INTERFACE_CONFLICT", client.api("AttachL2NetworkToCluster", {**attach, "l2NetworkUuid": twin})
    )
    assert l2 in err.message
    tagged = (await make_l2(client, zone, "eth0", vlan=7))["uuid"]
    await client.api("AttachL2NetworkToCluster", {**attach, "l2NetworkUuid": tagged})

    inv = (await client.api("DetachL2NetworkFromCluster", attach))["inventory"]
    assert inv["attachedClusterUuids"] == [cluster2]
    assert (await client.api("DetachL2NetworkFromCluster", attach))["inventory"]["attachedClusterUuids"] == [
        cluster2
    ]
    await client.api("AttachL2NetworkToCluster", {**attach, "l2NetworkUuid": twin})  # the bridge is free now

    # deleting a cluster takes its attachments with it
    await client.api("DeleteCluster", {"uuid": cluster2})
    assert (await query(client, "QueryL2Network", uuid=l2))[0]["attachedClusterUuids"] == []


# ---------------------------------------------------------------- L3


async def test_l3_crud_round_trip(node, client):
    zone = await make_zone(client)
    l2 = (await make_l2(client, zone))["uuid"]
    inv = await make_l3(client, l2, "private", description="d", dnsDomain="corp.example.com")
    assert {
        k: inv[k] for k in ("l2NetworkUuid", "zoneUuid", "type", "state", "category", "system", "dnsDomain")
    } == {
        "l2NetworkUuid": l2,
        "zoneUuid": zone,
        "type": "L3BasicNetwork",
        "state": "Enabled",
        "category": "Private",
        "system": False,
        "dnsDomain": "corp.example.com",
    }
    assert (inv["dns"], inv["ipRanges"], inv["networkServices"]) == ([], [], [])
    public = await make_l3(client, l2, "public", category="Public", system=True)
    assert [i["uuid"] for i in await query(client, "QueryL3Network", category="Public")] == [public["uuid"]]
    assert len(await query(client, "QueryL3Network", l2NetworkUuid=l2)) == 2

    up = (await client.api("UpdateL3Network", {"uuid": inv["uuid"], "name": "p2", "category": "Public"}))[
        "inventory"
    ]
    assert (up["name"], up["category"], up["description"], up["dnsDomain"]) == (
        "p2",
        "Public",
        "d",
        "corp.example.com",
    )
    err = await fails(
        Sys.INVALID_ARGUMENT,
        client.api("UpdateL3Network", {"uuid": inv["uuid"], "system": True, "category": "Private"}),
    )
    assert "not allowed" in err.message
    up = (await client.api("UpdateL3Network", {"uuid": inv["uuid"], "system": True, "category": "System"}))[
        "inventory"
    ]
    assert (up["system"], up["category"]) == (True, "System")

    down = (await client.api("ChangeL3NetworkState", {"uuid": inv["uuid"], "stateEvent": "disable"}))[
        "inventory"
    ]
    assert down["state"] == "Disabled"
    assert [i["uuid"] for i in await query(client, "QueryL3Network", state="Disabled")] == [inv["uuid"]]
    up = (await client.api("ChangeL3NetworkState", {"uuid": inv["uuid"], "stateEvent": "enable"}))[
        "inventory"
    ]
    assert up["state"] == "Enabled"

    assert await client.api("DeleteL3Network", {"uuid": inv["uuid"]}) == {}
    assert await client.api("DeleteL3Network", {"uuid": inv["uuid"]}) == {}
    assert [i["uuid"] for i in (await client.api("QueryL3Network", {}))["inventories"]] == [public["uuid"]]


L3_INVALID = [
    ("CreateL3Network", {"name": "n"}, "l2NetworkUuid"),
    ("CreateL3Network", {"l2NetworkUuid": "a" * 32}, "name"),
    ("CreateL3Network", {"l2NetworkUuid": "a" * 32, "name": "n", "type": "L3VpcNetwork"}, "type"),
    ("CreateL3Network", {"l2NetworkUuid": "a" * 32, "name": "n", "category": "Secret"}, "category"),
    ("CreateL3Network", {"l2NetworkUuid": "a" * 32, "name": "n", "system": True}, "(body)"),
    ("CreateL3Network", {"l2NetworkUuid": "a" * 32, "name": "n", "category": "System"}, "(body)"),
    ("CreateL3Network", {"l2NetworkUuid": "a" * 32, "name": "n", "dnsDomain": "bad domain"}, "dnsDomain"),
    ("CreateL3Network", {"l2NetworkUuid": "a" * 32, "name": "n", "dnsDomain": "-x.com"}, "dnsDomain"),
    ("UpdateL3Network", {"uuid": "a" * 32, "category": "Everyone"}, "category"),
    ("UpdateL3Network", {"uuid": "a" * 32, "dnsDomain": "a..b"}, "dnsDomain"),
    ("ChangeL3NetworkState", {"uuid": "a" * 32, "stateEvent": "pause"}, "stateEvent"),
    ("DeleteL3Network", {"uuid": "a" * 32, "deleteMode": "Never"}, "deleteMode"),
    ("AddDnsToL3Network", {"l3NetworkUuid": "a" * 32, "dns": "8.8.8"}, "dns"),
    ("AddDnsToL3Network", {"l3NetworkUuid": "a" * 32, "dns": "2001:db8::1"}, "dns"),
    ("AddDnsToL3Network", {"l3NetworkUuid": "a" * 32}, "dns"),
    ("RemoveDnsFromL3Network", {"l3NetworkUuid": "a" * 32, "dns": 8}, "dns"),
    (
        "AttachNetworkServiceToL3Network",
        {"l3NetworkUuid": "a" * 32, "networkServices": {}},
        "networkServices",
    ),
    (
        "AttachNetworkServiceToL3Network",
        {"l3NetworkUuid": "a" * 32, "networkServices": {VR: []}},
        f"networkServices.{VR}",
    ),
    (
        "AttachNetworkServiceToL3Network",
        {"l3NetworkUuid": "a" * 32, "networkServices": {VR: ["D H"]}},
        f"networkServices.{VR}.0",
    ),
    (
        "AttachNetworkServiceToL3Network",
        {"l3NetworkUuid": "a" * 32, "networkServices": {"vr": ["DHCP"]}},
        "networkServices.vr.[key]",
    ),
    ("DetachNetworkServiceFromL3Network", {"l3NetworkUuid": "a" * 32}, "networkServices"),
]


async def test_l3_needs_an_existing_l2(node, client):
    err = await fails(Sys.NOT_FOUND, make_l3(client, UNKNOWN))
    assert UNKNOWN in err.message
    for name, body in [
        ("UpdateL3Network", {"uuid": UNKNOWN, "name": "x"}),
        ("ChangeL3NetworkState", {"uuid": UNKNOWN, "stateEvent": "enable"}),
        ("AddDnsToL3Network", {"l3NetworkUuid": UNKNOWN, "dns": "8.8.8.8"}),
        ("AttachNetworkServiceToL3Network", {"l3NetworkUuid": UNKNOWN, "networkServices": {VR: ["DHCP"]}}),
    ]:
        await fails(Sys.NOT_FOUND, client.api(name, body))


async def test_dns_servers_keep_their_order(node, client, net):
    l3 = net["l3"]
    for dns in ("8.8.8.8", "1.1.1.1", "9.9.9.9"):
        inv = (await client.api("AddDnsToL3Network", {"l3NetworkUuid": l3, "dns": dns}))["inventory"]
    assert inv["dns"] == ["8.8.8.8", "1.1.1.1", "9.9.9.9"]
    err = await fails(
        "L3.DNS_DUPLICATE", client.api("AddDnsToL3Network", {"l3NetworkUuid": l3, "dns": "1.1.1.1"})
    )
    assert "1.1.1.1" in err.message
    inv = (await client.api("RemoveDnsFromL3Network", {"l3NetworkUuid": l3, "dns": "1.1.1.1"}))["inventory"]
    assert inv["dns"] == ["8.8.8.8", "9.9.9.9"]
    inv = (await client.api("RemoveDnsFromL3Network", {"l3NetworkUuid": l3, "dns": "1.1.1.1"}))["inventory"]
    assert inv["dns"] == ["8.8.8.8", "9.9.9.9"]  # removing again is harmless
    inv = (await client.api("AddDnsToL3Network", {"l3NetworkUuid": l3, "dns": "1.1.1.1"}))["inventory"]
    assert inv["dns"] == ["8.8.8.8", "9.9.9.9", "1.1.1.1"]
    assert (await l3_of(client, l3))["dns"] == ["8.8.8.8", "9.9.9.9", "1.1.1.1"]


# ---------------------------------------------------------------- network services


async def test_seeded_providers(node, client):
    providers = {p["type"]: p for p in (await client.api("QueryNetworkServiceProvider", {}))["inventories"]}
    assert set(providers) == {"VirtualRouter", "Flat", "SecurityGroup"}
    assert providers["VirtualRouter"]["uuid"] == VR
    assert {"DHCP", "DNS", "SNAT", "EIP", "PortForwarding"} <= set(
        providers["VirtualRouter"]["networkServiceTypes"]
    )
    assert set(providers["Flat"]["networkServiceTypes"]) >= {"DHCP", "EIP", "Userdata"}
    assert providers["SecurityGroup"]["networkServiceTypes"] == ["SecurityGroup"]
    assert [p["uuid"] for p in await query(client, "QueryNetworkServiceProvider", type="Flat")] == [FLAT]


async def test_attach_and_detach_network_services(node, client, net):
    l3 = net["l3"]

    def call(api: str, services: dict):
        return client.api(api, {"l3NetworkUuid": l3, "networkServices": services})

    inv = (
        await call("AttachNetworkServiceToL3Network", {VR: ["DHCP", "DNS", "SNAT"], SG: ["SecurityGroup"]})
    )["inventory"]
    services = {(s["networkServiceProviderUuid"], s["networkServiceType"]) for s in inv["networkServices"]}
    assert services == {(VR, "DHCP"), (VR, "DNS"), (VR, "SNAT"), (SG, "SecurityGroup")}
    assert all(s["l3NetworkUuid"] == l3 for s in inv["networkServices"])
    again = (await call("AttachNetworkServiceToL3Network", {VR: ["DHCP"]}))["inventory"]
    assert len(again["networkServices"]) == 4  # attaching again changes nothing

    err = await fails(
        "L3.NETWORK_SERVICE_CONFLICT", call("AttachNetworkServiceToL3Network", {FLAT: ["DHCP"]})
    )
    assert VR in err.message
    err = await fails(
        "L3.NETWORK_SERVICE_UNSUPPORTED", call("AttachNetworkServiceToL3Network", {FLAT: ["SNAT"]})
    )
    assert err.details["unsupported"] == ["SNAT"]
    await fails("L3.NETWORK_SERVICE_UNSUPPORTED", call("AttachNetworkServiceToL3Network", {VR: ["Teleport"]}))
    await fails(Sys.NOT_FOUND, call("AttachNetworkServiceToL3Network", {UNKNOWN: ["DHCP"]}))
    await fails(Sys.NOT_FOUND, call("DetachNetworkServiceFromL3Network", {UNKNOWN: ["DHCP"]}))
    assert len((await l3_of(client, l3))["networkServices"]) == 4  # failed calls changed nothing

    inv = (await call("DetachNetworkServiceFromL3Network", {VR: ["DHCP", "EIP"]}))["inventory"]
    assert {s["networkServiceType"] for s in inv["networkServices"]} == {"DNS", "SNAT", "SecurityGroup"}
    inv = (await call("AttachNetworkServiceToL3Network", {FLAT: ["DHCP", "EIP"]}))["inventory"]
    assert {(s["networkServiceProviderUuid"], s["networkServiceType"]) for s in inv["networkServices"]} >= {
        (FLAT, "DHCP"),
        (FLAT, "EIP"),
    }


# ---------------------------------------------------------------- IP ranges


async def test_ip_ranges_round_trip(node, client, net):
    l3 = net["l3"]
    low = await add_range(client, l3, "10.0.0.10", "10.0.0.20")
    assert {
        k: low[k] for k in ("startIp", "endIp", "netmask", "gateway", "networkCidr", "prefixLen", "ipVersion")
    } == {
        "startIp": "10.0.0.10",
        "endIp": "10.0.0.20",
        "netmask": "255.255.255.0",
        "gateway": "10.0.0.1",
        "networkCidr": "10.0.0.0/24",
        "prefixLen": 24,
        "ipVersion": 4,
    }
    high = await add_range(client, l3, "10.0.0.100", "10.0.0.200")
    assert [r["uuid"] for r in (await l3_of(client, l3))["ipRanges"]] == [low["uuid"], high["uuid"]]
    assert [
        r["uuid"] for r in await query(client, "QueryIpRange", l3NetworkUuid=l3, startIp="10.0.0.100")
    ] == [high["uuid"]]

    other = await make_l3(client, (await make_l2(client, net["zone"], "eth1"))["uuid"], "other")
    whole = (
        await client.api(
            "AddIpRangeByNetworkCidr",
            {"l3NetworkUuid": other["uuid"], "name": "all", "networkCidr": "10.0.0.0/24"},
        )
    )["inventory"]
    # the same addresses are fine on another L2 (another broadcast domain)
    assert (whole["gateway"], whole["startIp"], whole["endIp"], whole["networkCidr"]) == (
        "10.0.0.1",
        "10.0.0.2",
        "10.0.0.254",
        "10.0.0.0/24",
    )

    assert await client.api("DeleteIpRange", {"uuid": low["uuid"]}) == {}
    assert await client.api("DeleteIpRange", {"uuid": low["uuid"]}) == {}
    assert [r["uuid"] for r in (await l3_of(client, l3))["ipRanges"]] == [high["uuid"]]
    assert len((await client.api("QueryIpRange", {}))["inventories"]) == 2


def _range(**changes: Any) -> dict:
    body = {
        "l3NetworkUuid": "a" * 32,
        "name": "r",
        "startIp": "10.0.0.10",
        "endIp": "10.0.0.20",
        "netmask": "255.255.255.0",
        "gateway": "10.0.0.1",
    }
    body.update(changes)
    return {k: v for k, v in body.items() if v is not None}


# (body, the field the error names, what its message says)
RANGE_INVALID = [
    (_range(startIp="10.0.0"), "startIp", "not an IPv4 address"),
    (_range(startIp="10.0.0.010"), "startIp", "not an IPv4 address"),
    (_range(startIp="fe80::1"), "startIp", "not an IPv4 address"),
    (_range(startIp=None), "startIp", "required"),
    (_range(endIp="10.0.0.9"), "endIp", "before startIp"),
    (
        _range(startIp="224.0.0.10", endIp="224.0.0.20", gateway="224.0.0.1"),
        "endIp",
        "reserved block 224.0.0.0/4",
    ),
    (
        _range(startIp="127.0.0.10", endIp="127.0.0.20", gateway="127.0.0.1"),
        "endIp",
        "reserved block 127.0.0.0/8",
    ),
    (_range(startIp="169.254.1.10", endIp="169.254.1.20", gateway="169.254.1.1"), "endIp", "reserved"),
    (_range(netmask="255.0.255.0"), "netmask", "contiguous"),
    (_range(netmask="0.0.0.255"), "netmask", "contiguous"),
    (_range(netmask="0.0.0.0"), "netmask", "no room"),
    (_range(netmask="255.255.255.254"), "netmask", "no room"),
    (_range(netmask="255.255.255.255"), "netmask", "no room"),
    (_range(endIp="10.0.1.20"), "netmask", "not in one network 10.0.0.0/24"),
    (_range(startIp="10.0.0.0"), "netmask", "network address"),
    (_range(endIp="10.0.0.255"), "netmask", "broadcast address"),
    (_range(gateway="10.0.1.1"), "gateway", "not in the network"),
    (_range(gateway="10.0.0.0"), "gateway", "network or broadcast"),
    (_range(gateway="10.0.0.255"), "gateway", "network or broadcast"),
    (_range(gateway="10.0.0.15"), "gateway", "inside the range"),
    (_range(gateway="10.0.0.10"), "gateway", "inside the range"),
    (_range(gateway="10.0.0.20"), "gateway", "inside the range"),
    (_range(gateway=None), "gateway", "required"),
    (_range(name=""), "name", "at least 1"),
    (_range(l3NetworkUuid="x"), "l3NetworkUuid", "pattern"),
    (_range(ipVersion=6), "ipVersion", "Extra"),
]


# (networkCidr, what the error says)
CIDR_INVALID = [
    ("10.0.0.5/24", "host bits set; did you mean 10.0.0.0/24"),
    ("10.0.0.0", "not a network CIDR"),
    ("10.0.0.0/33", "not a network CIDR"),
    ("10.0.0.0/31", "no room"),
    ("10.0.0.0/32", "no room"),
    ("10.0.0.0/0", "no room"),
    ("nonsense/24", "not an IPv4 address"),
    ("fd00::/64", "not a network CIDR"),
    ("fd00::/16", "not an IPv4 address"),
    ("239.0.0.0/24", "reserved block"),
    ("10.000000000.0.0/24", "at most 18"),
]


async def expect_invalid(client, cases: list[tuple[str, dict, str, str]]) -> None:
    """Send every bad body (at once); each must fail validation naming its field and saying why."""
    results = await asyncio.gather(
        *(client.api(name, body) for name, body, _, _ in cases), return_exceptions=True
    )
    wrong = []
    for (name, body, field, needle), result in zip(cases, results, strict=True):
        if not isinstance(result, RingstackError):
            wrong.append((name, body, "accepted"))
            continue
        errors = {e["field"]: e["message"] for e in result.details.get("errors", [])}
        if result.code != Sys.INVALID_ARGUMENT or needle not in errors.get(field, "<no such field>"):
            wrong.append((name, body, result.code, errors))
    assert wrong == []


async def test_validation_errors_name_the_field(node, client):
    await expect_invalid(
        client,
        [(name, body, field, "") for name, body, field in L2_INVALID + L3_INVALID]
        + [("AddIpRange", body, field, needle) for body, field, needle in RANGE_INVALID]
        + [
            (
                "AddIpRangeByNetworkCidr",
                {"l3NetworkUuid": "a" * 32, "name": "r", "networkCidr": cidr},
                "networkCidr",
                needle,
            )
            for cidr, needle in CIDR_INVALID
        ],
    )
    for api in ("QueryL2Network", "QueryL3Network", "QueryIpRange"):
        assert (await client.api(api, {"count": True}))["total"] == 0  # nothing was made


async def test_ranges_may_not_overlap_in_one_broadcast_domain(node, client, net):
    l3 = net["l3"]
    first = await add_range(client, l3, "10.0.0.10", "10.0.0.20")
    for start, end in [
        ("10.0.0.20", "10.0.0.30"),
        ("10.0.0.2", "10.0.0.10"),
        ("10.0.0.12", "10.0.0.13"),
        ("10.0.0.2", "10.0.0.250"),
    ]:
        err = await fails("L3.IP_RANGE_OVERLAP", add_range(client, l3, start, end))
        assert first["uuid"] in err.message
    # another L3 on the same L2 is the same broadcast domain
    sibling = (await make_l3(client, net["l2"], "sibling"))["uuid"]
    await fails("L3.IP_RANGE_OVERLAP", add_range(client, sibling, "10.0.0.15", "10.0.0.16"))
    await fails(
        "L3.IP_RANGE_OVERLAP",
        client.api(
            "AddIpRangeByNetworkCidr", {"l3NetworkUuid": sibling, "name": "n", "networkCidr": "10.0.0.0/24"}
        ),
    )
    # one network and one gateway per L3
    err = await fails(
        "L3.IP_RANGE_CIDR_MISMATCH", add_range(client, l3, "10.0.0.30", "10.0.0.40", netmask="255.255.0.0")
    )
    assert "10.0.0.0/24" in err.message
    await fails(
        "L3.IP_RANGE_CIDR_MISMATCH", add_range(client, l3, "10.1.0.30", "10.1.0.40", gateway="10.1.0.1")
    )
    err = await fails(
        "L3.IP_RANGE_GATEWAY_MISMATCH", add_range(client, l3, "10.0.0.30", "10.0.0.40", gateway="10.0.0.254")
    )
    assert "10.0.0.1" in err.message
    await add_range(client, l3, "10.0.0.21", "10.0.0.30")  # adjacent is fine
    await add_range(client, sibling, "10.0.0.31", "10.0.0.40")
    assert len((await client.api("QueryIpRange", {}))["inventories"]) == 3


async def test_concurrent_overlapping_ranges_on_one_l2_yield_exactly_one(node, client, net):
    l3s = [net["l3"]] + [(await make_l3(client, net["l2"], f"s{i}"))["uuid"] for i in range(4)]
    results = await asyncio.gather(
        *(add_range(client, l3, "10.0.0.10", "10.0.0.20") for l3 in l3s), return_exceptions=True
    )
    assert sum(isinstance(r, dict) for r in results) == 1
    assert {r.code for r in results if isinstance(r, RingstackError)} == {"L3.IP_RANGE_OVERLAP"}


async def test_range_apis_need_an_existing_l3_and_range(node, client):
    await fails(Sys.NOT_FOUND, add_range(client, UNKNOWN, "10.0.0.10", "10.0.0.20"))
    await fails(
        Sys.NOT_FOUND,
        client.api(
            "AddIpRangeByNetworkCidr", {"l3NetworkUuid": UNKNOWN, "name": "n", "networkCidr": "10.0.0.0/24"}
        ),
    )
    await fails(Sys.INVALID_ARGUMENT, client.api("DeleteIpRange", {"uuid": "nope"}))
    await fails(
        Sys.INVALID_ARGUMENT,
        client.api("QueryIpRange", {"conditions": [{"name": "nope", "op": "=", "value": 1}]}),
    )


# ---------------------------------------------------------------- cascades


async def allocate(client, l3: str, **extra: Any) -> dict:
    return (await client.api("InternalAllocateIp", {"l3NetworkUuid": l3, **extra}))["inventory"]


async def test_l3_deletion_takes_its_ranges_but_permissive_refuses_while_ips_are_allocated(node, client, net):
    l3 = net["l3"]
    kept = await add_range(client, l3, "10.0.0.10", "10.0.0.20")
    await client.api("AddDnsToL3Network", {"l3NetworkUuid": l3, "dns": "8.8.8.8"})
    await client.api(
        "AttachNetworkServiceToL3Network", {"l3NetworkUuid": l3, "networkServices": {VR: ["DHCP"]}}
    )
    ip = await allocate(client, l3)

    err = await fails(Sys.RESOURCE_IN_USE, client.api("DeleteL3Network", {"uuid": l3}))
    assert err.details["children"]["used_ip"] == [ip["uuid"]]
    await fails(Sys.RESOURCE_IN_USE, client.api("DeleteIpRange", {"uuid": kept["uuid"]}))
    assert len(await query(client, "QueryIpRange", l3NetworkUuid=l3)) == 1

    await client.api("InternalReleaseIp", {"l3NetworkUuid": l3, "ip": ip["ip"]})
    assert (
        await client.api("DeleteL3Network", {"uuid": l3}) == {}
    )  # Permissive: ranges, DNS, services go with it
    assert await query(client, "QueryIpRange", l3NetworkUuid=l3) == []
    assert await query(client, "QueryL3Network", uuid=l3) == []

    again = (await make_l3(client, net["l2"], "again"))["uuid"]
    second = await add_range(client, again, "10.0.0.10", "10.0.0.20")  # the old range is really gone
    await allocate(client, again)
    assert await client.api("DeleteIpRange", {"uuid": second["uuid"], "deleteMode": "Enforcing"}) == {}
    assert (await client.api("GetIpAddressCapacity", {"l3NetworkUuid": again}))["usedIpAddressNumber"] == 0
    await add_range(client, again, "10.0.0.10", "10.0.0.20")
    await allocate(client, again)
    assert await client.api("DeleteL3Network", {"uuid": again, "deleteMode": "Enforcing"}) == {}
    assert await query(client, "QueryIpRange", l3NetworkUuid=again) == []


async def test_l2_deletion_cascades_to_l3s(node, client, net):
    rng = await add_range(client, net["l3"], "10.0.0.10", "10.0.0.20")
    cluster = await make_cluster(client, net["zone"])
    await client.api("AttachL2NetworkToCluster", {"l2NetworkUuid": net["l2"], "clusterUuid": cluster})
    err = await fails(Sys.RESOURCE_IN_USE, client.api("DeleteL2Network", {"uuid": net["l2"]}))
    assert err.details["children"] == {"l3_network": [net["l3"]]}

    received = await subscribe(client, "ipdel", "ip_range.#", "l3_network.#", "l2_network.#")
    await allocate(client, net["l3"])
    assert await client.api("DeleteL2Network", {"uuid": net["l2"], "deleteMode": "Enforcing"}) == {}
    assert await query(client, "QueryL3Network", uuid=net["l3"]) == []
    assert await query(client, "QueryIpRange", uuid=rng["uuid"]) == []
    assert await query(client, "QueryL2Network", uuid=net["l2"]) == []
    names = [await next_event(received) for _ in range(3)]
    assert [n for n, _ in names] == ["ip_range.deleted", "l3_network.deleted", "l2_network.deleted"]
    assert [b["resourceUuid"] for _, b in names] == [rng["uuid"], net["l3"], net["l2"]]


async def test_zone_deletion_cascades_through_the_network_tree(node, client, net):
    await add_range(client, net["l3"], "10.0.0.10", "10.0.0.20")
    await allocate(client, net["l3"])
    tagged = (await make_l2(client, net["zone"], "eth1", vlan=9))["uuid"]
    await make_l3(client, tagged, "t")
    err = await fails(Sys.RESOURCE_IN_USE, client.api("DeleteZone", {"uuid": net["zone"]}))
    assert sorted(err.details["children"]["l2_network"]) == sorted([net["l2"], tagged])

    assert await client.api("DeleteZone", {"uuid": net["zone"], "deleteMode": "Enforcing"}) == {}
    for api in ("QueryL2Network", "QueryL3Network", "QueryIpRange"):
        assert (await client.api(api, {"count": True}))["total"] == 0, api
    # the addresses went too: the same range can be made and used again from scratch
    zone = await make_zone(client)
    l3 = (await make_l3(client, (await make_l2(client, zone))["uuid"]))["uuid"]
    await add_range(client, l3, "10.0.0.10", "10.0.0.20")
    assert (await client.api("GetIpAddressCapacity", {"l3NetworkUuid": l3}))["availableCapacity"] == 11


# ---------------------------------------------------------------- events


async def subscribe(client, name: str, *patterns: str) -> asyncio.Queue:
    received: asyncio.Queue = asyncio.Queue()

    async def on_event(env):
        received.put_nowait((env.name, env.body))

    await client.start_consumer(client.consume(client.topology.event_queue(name, *patterns), on_event))
    return received


async def next_event(received: asyncio.Queue) -> tuple[str, dict]:
    return await asyncio.wait_for(received.get(), 5)


async def test_every_change_publishes_an_event(node, client):
    received = await subscribe(client, "net", "l2_network.#", "l3_network.#", "ip_range.#")
    zone = await make_zone(client)
    cluster = await make_cluster(client, zone)
    l2 = (await make_l2(client, zone))["uuid"]
    await client.api("UpdateL2Network", {"uuid": l2, "description": "d"})
    await client.api("AttachL2NetworkToCluster", {"l2NetworkUuid": l2, "clusterUuid": cluster})
    await client.api("DetachL2NetworkFromCluster", {"l2NetworkUuid": l2, "clusterUuid": cluster})
    l3 = (await make_l3(client, l2))["uuid"]
    await client.api("UpdateL3Network", {"uuid": l3, "name": "n2"})
    await client.api("ChangeL3NetworkState", {"uuid": l3, "stateEvent": "disable"})
    await client.api("AddDnsToL3Network", {"l3NetworkUuid": l3, "dns": "8.8.8.8"})
    await client.api("RemoveDnsFromL3Network", {"l3NetworkUuid": l3, "dns": "8.8.8.8"})
    await client.api(
        "AttachNetworkServiceToL3Network", {"l3NetworkUuid": l3, "networkServices": {VR: ["DNS"]}}
    )
    await client.api(
        "DetachNetworkServiceFromL3Network", {"l3NetworkUuid": l3, "networkServices": {VR: ["DNS"]}}
    )
    rng = await add_range(client, l3, "10.0.0.10", "10.0.0.20")
    await client.api("DeleteIpRange", {"uuid": rng["uuid"]})
    await client.api("DeleteL3Network", {"uuid": l3})
    await client.api("DeleteL2Network", {"uuid": l2})
    events = [await next_event(received) for _ in range(15)]
    assert [name for name, _ in events] == [
        "l2_network.created",
        "l2_network.updated",
        "l2_network.attached",
        "l2_network.detached",
        "l3_network.created",
        "l3_network.updated",
        "l3_network.state",
        "l3_network.dns_added",
        "l3_network.dns_removed",
        "l3_network.services_attached",
        "l3_network.services_detached",
        "ip_range.created",
        "ip_range.deleted",
        "l3_network.deleted",
        "l2_network.deleted",
    ]
    assert events[2][1]["inventory"]["attachedClusterUuids"] == [cluster]
    assert events[7][1]["inventory"]["dns"] == ["8.8.8.8"]
    assert events[11][1]["resourceUuid"] == rng["uuid"]
    assert received.empty()


# ---------------------------------------------------------------- permissions


async def test_normal_accounts_make_private_l3s_on_shared_l2s_only(node, client, net):
    alice = await client.new_account("alice")
    bob = await client.new_account("bob")
    admin_range = await add_range(client, net["l3"], "10.0.0.10", "10.0.0.20")

    # L2 networks are infrastructure
    for name, body in [
        ("CreateL2NoVlanNetwork", {"zoneUuid": net["zone"], "name": "x", "physicalInterface": "eth9"}),
        (
            "CreateL2VlanNetwork",
            {"zoneUuid": net["zone"], "name": "x", "physicalInterface": "eth9", "vlan": 3},
        ),
        ("UpdateL2Network", {"uuid": net["l2"], "name": "x"}),
        ("DeleteL2Network", {"uuid": net["l2"]}),
        ("AttachL2NetworkToCluster", {"l2NetworkUuid": net["l2"], "clusterUuid": UNKNOWN}),
        ("DetachL2NetworkFromCluster", {"l2NetworkUuid": net["l2"], "clusterUuid": UNKNOWN}),
        ("InternalAllocateIp", {"l3NetworkUuid": net["l3"]}),
        ("InternalReleaseIp", {"l3NetworkUuid": net["l3"], "ip": "10.0.0.10"}),
    ]:
        await fails(Sys.PERMISSION_DENIED, alice.api(name, body))
    assert (await alice.api("QueryL2Network", {}))["inventories"] == []
    assert (await alice.api("QueryL3Network", {}))["inventories"] == []
    assert (await alice.api("QueryIpRange", {}))["inventories"] == []
    await fails(Sys.NOT_FOUND, make_l3(alice, net["l2"]))  # an L2 not shared with her does not exist for her

    await client.api("ShareResource", {"resourceUuids": [net["l2"]], "accountUuids": [alice.account_uuid]})
    assert [i["uuid"] for i in (await alice.api("QueryL2Network", {}))["inventories"]] == [net["l2"]]
    await fails(Sys.PERMISSION_DENIED, make_l3(alice, net["l2"], category="Public"))
    await fails(Sys.PERMISSION_DENIED, make_l3(alice, net["l2"], category="System", system=True))
    mine = (await make_l3(alice, net["l2"], "alice-net"))["uuid"]
    await fails(Sys.PERMISSION_DENIED, alice.api("UpdateL3Network", {"uuid": mine, "category": "Public"}))
    await alice.api("UpdateL3Network", {"uuid": mine, "description": "mine"})
    await alice.api("AddDnsToL3Network", {"l3NetworkUuid": mine, "dns": "8.8.8.8"})
    await alice.api(
        "AttachNetworkServiceToL3Network", {"l3NetworkUuid": mine, "networkServices": {FLAT: ["DHCP"]}}
    )
    # the admin's range is in the same broadcast domain: refused, without naming what she cannot see
    err = await fails("L3.IP_RANGE_OVERLAP", add_range(alice, mine, "10.0.0.15", "10.0.0.30"))
    assert admin_range["uuid"] not in err.message and net["l3"] not in err.message
    own_range = await add_range(alice, mine, "10.0.0.30", "10.0.0.40")
    assert [i["uuid"] for i in (await alice.api("QueryL3Network", {}))["inventories"]] == [mine]
    assert [i["uuid"] for i in (await alice.api("QueryIpRange", {}))["inventories"]] == [own_range["uuid"]]
    assert (await alice.api("GetIpAddressCapacity", {"l3NetworkUuid": mine}))["totalCapacity"] == 11

    # the admin's L3, shared with her, is hers to read and use, not to change
    await client.api("ShareResource", {"resourceUuids": [net["l3"]], "accountUuids": [alice.account_uuid]})
    assert {i["uuid"] for i in (await alice.api("QueryL3Network", {}))["inventories"]} == {mine, net["l3"]}
    assert {i["uuid"] for i in (await alice.api("QueryIpRange", {}))["inventories"]} == {
        own_range["uuid"],
        admin_range["uuid"],
    }
    free = (await alice.api("GetFreeIp", {"l3NetworkUuid": net["l3"], "limit": 2}))["inventories"]
    assert [f["ip"] for f in free] == ["10.0.0.10", "10.0.0.11"]
    for name, body in [
        ("UpdateL3Network", {"uuid": net["l3"], "name": "x"}),
        ("ChangeL3NetworkState", {"uuid": net["l3"], "stateEvent": "disable"}),
        ("DeleteL3Network", {"uuid": net["l3"]}),
        ("AddDnsToL3Network", {"l3NetworkUuid": net["l3"], "dns": "8.8.4.4"}),
        ("AttachNetworkServiceToL3Network", {"l3NetworkUuid": net["l3"], "networkServices": {VR: ["DNS"]}}),
        ("AddIpRangeByNetworkCidr", {"l3NetworkUuid": net["l3"], "name": "x", "networkCidr": "10.9.0.0/24"}),
        ("DeleteIpRange", {"uuid": admin_range["uuid"]}),
    ]:
        await fails(Sys.PERMISSION_DENIED, alice.api(name, body))

    # bob sees none of it
    assert (await bob.api("QueryL3Network", {}))["inventories"] == []
    assert (await bob.api("QueryIpRange", {}))["inventories"] == []
    for name, body in [
        ("UpdateL3Network", {"uuid": mine, "name": "x"}),
        ("AddDnsToL3Network", {"l3NetworkUuid": mine, "dns": "8.8.4.4"}),
        ("GetFreeIp", {"l3NetworkUuid": mine}),
        ("CheckIpAvailability", {"l3NetworkUuid": mine, "ip": "10.0.0.30"}),
        ("GetIpAddressCapacity", {"l3NetworkUuid": mine}),
    ]:
        await fails(Sys.NOT_FOUND, bob.api(name, body))
    # Deletes of what bob cannot see succeed doing nothing, as deletes of what does not exist do
    # (issue #11: the answers must not differ).
    assert await bob.api("DeleteIpRange", {"uuid": own_range["uuid"]}) == {}
    assert await bob.api("DeleteL3Network", {"uuid": mine}) == {}
    assert {i["uuid"] for i in (await alice.api("QueryIpRange", {}))["inventories"]} >= {own_range["uuid"]}

    # the admin sees and may change everything
    assert {i["uuid"] for i in (await client.api("QueryL3Network", {}))["inventories"]} == {mine, net["l3"]}
    assert await alice.api("DeleteL3Network", {"uuid": mine}) == {}


# ---------------------------------------------------------------- re-execution


def resumed_context(name: str):
    """The context of a request re-run by a new owner after the node running it died."""
    from bus.envelope import Envelope
    from mgmt.core.service import SYSTEM_ACCOUNT, CallContext

    return CallContext(Envelope(name=name, kind="api"), SYSTEM_ACCOUNT, resumed=True)


async def test_resumed_requests_complete_instead_of_failing(node, client, net):
    """A request whose first run committed before its node died completes when run again."""
    from schema.api.network import AddDnsToL3Network, CreateL3Network
    from schema.api.network_ipam import AddIpRange

    l3_service = next(s for s in node.services if s.name == "l3network")
    ipam_service = next(s for s in node.services if s.name == "ipam")
    await client.api("AddDnsToL3Network", {"l3NetworkUuid": net["l3"], "dns": "8.8.8.8"})
    again = await l3_service.add_dns(
        AddDnsToL3Network(l3_network_uuid=net["l3"], dns="8.8.8.8"), resumed_context("AddDnsToL3Network")
    )
    assert again.inventory.dns == ["8.8.8.8"]

    made = await client.api("CreateL3Network", {"l2NetworkUuid": net["l2"], "name": "x"})
    msg = CreateL3Network(l2_network_uuid=net["l2"], name="x", resource_uuid=made["inventory"]["uuid"])
    assert (
        await l3_service.create(msg, resumed_context("CreateL3Network"))
    ).inventory.uuid == msg.resource_uuid

    rng = await add_range(client, net["l3"], "10.0.0.10", "10.0.0.20")
    msg = AddIpRange(
        l3_network_uuid=net["l3"], name="r", start_ip="10.0.0.10", end_ip="10.0.0.20",
        netmask="255.255.255.0", gateway="10.0.0.1", resource_uuid=rng["uuid"],
    )  # fmt: skip
    # without the guard this would be refused as overlapping the range it made itself
    assert (await ipam_service.add_range(msg, resumed_context("AddIpRange"))).inventory.uuid == rng["uuid"]
    assert len(await query(client, "QueryL3Network", l2NetworkUuid=net["l2"])) == 2
    assert len(await query(client, "QueryIpRange", l3NetworkUuid=net["l3"])) == 1
