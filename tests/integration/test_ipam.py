"""IP address management on the real broker and database: concurrent allocation over two
management nodes, exhaustion, static IPs, release, the read APIs and the in-transaction API."""

from __future__ import annotations

import asyncio
from ipaddress import IPv4Address
from typing import Any

import pytest
from sqlalchemy import text

from bus.envelope import new_uuid
from bus.errors import RingstackError, Sys
from mgmt.core.service import SYSTEM_ACCOUNT, Account
from mgmt.services.network.ipam import allocate_ip, release_ip, release_ips_for
from schema import ipv4 as addr
from tests.support.cluster import until

UNKNOWN = "f" * 32


async def fails(code: str, call) -> RingstackError:
    with pytest.raises(RingstackError) as err:
        await call
    assert err.value.code == code, err.value
    return err.value


async def make_l3(client, name: str = "pool") -> str:
    zone = (await client.api("CreateZone", {"name": "z"}))["inventory"]["uuid"]
    body = {"zoneUuid": zone, "name": "l2", "physicalInterface": "eth0"}
    l2 = (await client.api("CreateL2NoVlanNetwork", body))["inventory"]["uuid"]
    return (await client.api("CreateL3Network", {"l2NetworkUuid": l2, "name": name}))["inventory"]["uuid"]


async def add_range(client, l3: str, start: str, end: str, gateway: str = "10.0.0.1") -> str:
    body = {
        "l3NetworkUuid": l3,
        "name": "r",
        "startIp": start,
        "endIp": end,
        "netmask": "255.255.255.0",
        "gateway": gateway,
    }
    return (await client.api("AddIpRange", body))["inventory"]["uuid"]


async def allocate(client, l3: str, **extra: Any) -> dict:
    body = {"l3NetworkUuid": l3, **extra}
    return (await client.api("InternalAllocateIp", body, timeout=60))["inventory"]


async def release(client, l3: str, ip: str) -> bool:
    return (await client.api("InternalReleaseIp", {"l3NetworkUuid": l3, "ip": ip}, timeout=60))["released"]


async def capacity(client, l3: str, **extra: Any) -> dict:
    return await client.api("GetIpAddressCapacity", {"l3NetworkUuid": l3, **extra})


def sql(node, query: str, **params: Any) -> list[Any]:
    with node.db.session() as session:
        return list(session.execute(text(query), params).all())


@pytest.fixture
async def two_nodes(node_config):
    """Two management nodes in this process, on one database and one namespace: both consume the
    shared API queue and each runs the jobs of the partitions it holds."""
    from mgmt.node import ManagementNode

    # Default heartbeat and lease timings: the two nodes share this process's event loop with the
    # test's 200 requests, so tighter leases could expire under a loaded machine.
    nodes = [ManagementNode(node_config.model_copy(update={"node_uuid": new_uuid()})) for _ in range(2)]
    started: list[ManagementNode] = []
    try:
        for n in nodes:
            await n.start()
            started.append(n)

        async def converged() -> bool:
            return all(
                len(n.cluster.ring.members) == 2
                and len(n.cluster.ownership.held) == len(n.cluster.ring.partitions_of(n.uuid))
                for n in nodes
            )

        await until(converged, 30, "both nodes to hold their partitions")
        yield nodes
    finally:
        for n in reversed(started):
            await n.stop()


# ---------------------------------------------------------------- concurrency


@pytest.mark.parametrize("strategy", [addr.FIRST_AVAILABLE, addr.RANDOM])
async def test_200_concurrent_allocations_over_two_nodes(two_nodes, client, strategy):
    """No address twice, none outside the range, none left behind after the releases. First-available
    makes every concurrent transaction want the same address: the unique constraint and the
    savepoint retries sort them out."""
    l3 = await make_l3(client)
    await add_range(client, l3, "10.0.0.2", "10.0.0.251")  # 250 addresses, gateway 10.0.0.1
    assert (await capacity(client, l3))["availableCapacity"] == 250

    results = await asyncio.gather(*(allocate(client, l3, allocatorStrategy=strategy) for _ in range(200)))
    ips = [r["ip"] for r in results]
    assert len(set(ips)) == 200
    assert all(IPv4Address("10.0.0.2") <= IPv4Address(ip) <= IPv4Address("10.0.0.251") for ip in ips)
    assert {(r["gateway"], r["netmask"]) for r in results} == {("10.0.0.1", "255.255.255.0")}
    runners = dict(
        sql(two_nodes[0], "SELECT node_uuid, count(*) FROM job WHERE name = 'InternalAllocateIp' GROUP BY 1")
    )
    assert set(runners) == {n.uuid for n in two_nodes}, runners  # both nodes did part of the work
    stored = sql(two_nodes[0], "SELECT ip FROM used_ip WHERE l3_network_uuid = :l3", l3=l3)
    assert sorted(ip for (ip,) in stored) == sorted(ips)
    assert (await capacity(client, l3))["availableCapacity"] == 50

    assert await asyncio.gather(*(release(client, l3, ip) for ip in ips)) == [True] * 200
    assert sql(two_nodes[0], "SELECT count(*) FROM used_ip") == [(0,)]
    assert await capacity(client, l3) == {
        "totalCapacity": 250,
        "availableCapacity": 250,
        "usedIpAddressNumber": 0,
    }
    free = (await client.api("GetFreeIp", {"l3NetworkUuid": l3, "limit": 1000}))["inventories"]
    assert len(free) == 250


async def test_exhaustion_lets_exactly_the_free_addresses_through(node, client):
    l3 = await make_l3(client, "small-pool")
    await add_range(client, l3, "10.0.0.10", "10.0.0.19")  # 10 addresses
    results = await asyncio.gather(
        *(allocate(client, l3, allocatorStrategy=addr.FIRST_AVAILABLE) for _ in range(15)),
        return_exceptions=True,
    )
    won = [r["ip"] for r in results if isinstance(r, dict)]
    lost = [r for r in results if isinstance(r, RingstackError)]
    assert sorted(won, key=IPv4Address) == [f"10.0.0.{i}" for i in range(10, 20)]
    assert len(lost) == 5
    assert {e.code for e in lost} == {"L3.IP_EXHAUSTED"}
    assert all("small-pool" in e.message and l3 in e.message for e in lost)
    assert await capacity(client, l3) == {
        "totalCapacity": 10,
        "availableCapacity": 0,
        "usedIpAddressNumber": 10,
    }
    await release(client, l3, "10.0.0.13")
    assert (await allocate(client, l3))["ip"] == "10.0.0.13"  # the one free address


# ---------------------------------------------------------------- static IPs and release


async def test_static_ip(node, client):
    l3 = await make_l3(client)
    rng = await add_range(client, l3, "10.0.0.10", "10.0.0.20")
    nic = new_uuid()
    got = await allocate(client, l3, staticIp="10.0.0.15", usedForUuid=nic)
    assert (got["ip"], got["ipRangeUuid"], got["usedForUuid"], got["l3NetworkUuid"]) == (
        "10.0.0.15",
        rng,
        nic,
        l3,
    )
    assert got["ownerAccountUuid"] == client.account_uuid
    err = await fails("L3.IP_IN_USE", allocate(client, l3, staticIp="10.0.0.15"))
    assert "10.0.0.15" in err.message
    for ip in ("10.0.0.1", "10.0.0.9", "10.0.0.21", "10.0.1.15"):  # the gateway, outside the range
        err = await fails("L3.IP_NOT_IN_RANGE", allocate(client, l3, staticIp=ip))
        assert ip in err.message
    assert (await capacity(client, l3))["usedIpAddressNumber"] == 1


async def test_release(node, client):
    l3 = await make_l3(client)
    await add_range(client, l3, "10.0.0.10", "10.0.0.20")
    ip = (await allocate(client, l3))["ip"]
    assert await release(client, l3, ip) is True
    assert await release(client, l3, ip) is False  # a retried release is harmless
    assert await release(client, l3, "10.0.0.12") is False  # in range, never allocated
    err = await fails("L3.IP_NOT_IN_RANGE", release(client, l3, "192.168.1.1"))
    assert "192.168.1.1" in err.message
    await fails(Sys.NOT_FOUND, release(client, UNKNOWN, "10.0.0.10"))
    await fails(Sys.INVALID_ARGUMENT, release(client, l3, "10.0.0"))
    assert (await capacity(client, l3))["usedIpAddressNumber"] == 0


async def test_allocation_refusals(node, client):
    l3 = await make_l3(client, "empty")
    err = await fails("L3.NO_IP_RANGE", allocate(client, l3))
    assert "empty" in err.message
    await add_range(client, l3, "10.0.0.10", "10.0.0.20")
    await client.api("ChangeL3NetworkState", {"uuid": l3, "stateEvent": "disable"})
    await fails("L3.NETWORK_DISABLED", allocate(client, l3))
    await client.api("ChangeL3NetworkState", {"uuid": l3, "stateEvent": "enable"})
    await fails(Sys.NOT_FOUND, allocate(client, UNKNOWN))
    # the allocation's uuid is its resourceUuid: a second request with the same one is refused
    uuid = new_uuid()
    assert (await allocate(client, l3, resourceUuid=uuid))["uuid"] == uuid
    await fails(Sys.CONFLICT, allocate(client, l3, resourceUuid=uuid))
    assert (await capacity(client, l3))["usedIpAddressNumber"] == 1


# (API, body, the field the error names)
IPAM_INVALID = [
    ("InternalAllocateIp", {}, "l3NetworkUuid"),
    ("InternalAllocateIp", {"l3NetworkUuid": "a" * 32, "staticIp": "10.0.0.256"}, "staticIp"),
    ("InternalAllocateIp", {"l3NetworkUuid": "a" * 32, "usedForUuid": "nic-1"}, "usedForUuid"),
    ("InternalAllocateIp", {"l3NetworkUuid": "a" * 32, "ownerAccountUuid": "me"}, "ownerAccountUuid"),
    (
        "InternalAllocateIp",
        {"l3NetworkUuid": "a" * 32, "allocatorStrategy": "Nearest"},
        "allocatorStrategy",
    ),
    (
        "InternalAllocateIp",
        {"l3NetworkUuid": "a" * 32, "staticIp": "10.0.0.5", "allocatorStrategy": addr.RANDOM},
        "(body)",
    ),
    ("InternalReleaseIp", {"l3NetworkUuid": "a" * 32}, "ip"),
    ("InternalReleaseIp", {"l3NetworkUuid": "a" * 32, "ip": "::1"}, "ip"),
    ("CheckIpAvailability", {"l3NetworkUuid": "a" * 32, "ip": "x"}, "ip"),
    ("CheckIpAvailability", {"ip": "10.0.0.1"}, "l3NetworkUuid"),
    ("GetFreeIp", {"l3NetworkUuid": "a" * 32, "limit": 0}, "limit"),
    ("GetFreeIp", {"l3NetworkUuid": "a" * 32, "limit": 10_001}, "limit"),
    ("GetFreeIp", {"l3NetworkUuid": "a" * 32, "start": "10.0.0"}, "start"),
    ("GetFreeIp", {"l3NetworkUuid": "a" * 32, "ipRangeUuid": "r"}, "ipRangeUuid"),
    ("GetIpAddressCapacity", {"l3NetworkUuid": "a" * 32, "ipRangeUuids": ["r"]}, "ipRangeUuids.0"),
]


async def test_ipam_validation_errors_name_the_field(node, client):
    cases = IPAM_INVALID
    results = await asyncio.gather(
        *(client.api(name, body) for name, body, _ in cases), return_exceptions=True
    )
    wrong = []
    for (name, body, field), result in zip(cases, results, strict=True):
        fields = (
            [e["field"] for e in result.details.get("errors", [])]
            if isinstance(result, RingstackError)
            else []
        )
        if (
            not isinstance(result, RingstackError)
            or result.code != Sys.INVALID_ARGUMENT
            or field not in fields
        ):
            wrong.append((name, body, result))
    assert wrong == []


# ---------------------------------------------------------------- reads


async def test_check_availability_free_ips_and_capacity(node, client):
    l3 = await make_l3(client)
    low = await add_range(client, l3, "10.0.0.10", "10.0.0.12")
    high = await add_range(client, l3, "10.0.0.100", "10.0.0.104")
    await allocate(client, l3, staticIp="10.0.0.11")

    async def check(ip: str) -> tuple[bool, str | None]:
        reply = await client.api("CheckIpAvailability", {"l3NetworkUuid": l3, "ip": ip})
        return reply["available"], reply.get("reason")

    assert await check("10.0.0.10") == (True, None)
    assert await check("10.0.0.11") == (False, "Used")
    assert await check("10.0.0.1") == (False, "Gateway")
    assert await check("10.0.0.50") == (False, "NotInRange")
    await fails(
        Sys.NOT_FOUND, client.api("CheckIpAvailability", {"l3NetworkUuid": UNKNOWN, "ip": "10.0.0.1"})
    )

    async def free(**extra: Any) -> list[str]:
        reply = await client.api("GetFreeIp", {"l3NetworkUuid": l3, **extra})
        return [f["ip"] for f in reply["inventories"]]

    assert await free() == [
        "10.0.0.10",
        "10.0.0.12",
        "10.0.0.100",
        "10.0.0.101",
        "10.0.0.102",
        "10.0.0.103",
        "10.0.0.104",
    ]
    assert await free(limit=2) == ["10.0.0.10", "10.0.0.12"]
    assert await free(start="10.0.0.12", limit=3) == ["10.0.0.12", "10.0.0.100", "10.0.0.101"]
    assert await free(ipRangeUuid=high, start="10.0.0.103") == ["10.0.0.103", "10.0.0.104"]
    first = (await client.api("GetFreeIp", {"l3NetworkUuid": l3, "limit": 1}))["inventories"][0]
    assert first == {"ip": "10.0.0.10", "gateway": "10.0.0.1", "netmask": "255.255.255.0", "ipRangeUuid": low}
    other = await make_l3(client, "other")
    other_range = await add_range(client, other, "10.0.0.10", "10.0.0.20")
    await fails(Sys.NOT_FOUND, free(ipRangeUuid=other_range))

    assert await capacity(client, l3) == {
        "totalCapacity": 8,
        "availableCapacity": 7,
        "usedIpAddressNumber": 1,
    }
    assert await capacity(client, l3, ipRangeUuids=[low]) == {
        "totalCapacity": 3,
        "availableCapacity": 2,
        "usedIpAddressNumber": 1,
    }
    await fails(Sys.NOT_FOUND, capacity(client, l3, ipRangeUuids=[low, other_range]))


# ---------------------------------------------------------------- the in-transaction API


async def test_allocate_ip_inside_a_callers_transaction_survives_collisions(node, client):
    """A collision is rolled back to a savepoint: the caller's transaction goes on and commits."""
    l3 = await make_l3(client)
    await add_range(client, l3, "10.0.0.10", "10.0.0.20")
    taken = (await allocate(client, l3, staticIp="10.0.0.10"))["ip"]

    def work(session) -> tuple[tuple[str, ...], str, tuple[str, ...]]:
        first = allocate_ip(session, l3, SYSTEM_ACCOUNT.uuid, static_ip="10.0.0.15", for_uuid="a" * 32)
        with pytest.raises(RingstackError) as err:
            allocate_ip(session, l3, SYSTEM_ACCOUNT.uuid, static_ip=taken)
        second = allocate_ip(
            session, l3, SYSTEM_ACCOUNT.uuid, strategy=addr.FIRST_AVAILABLE, for_uuid="a" * 32
        )
        return tuple(first), err.value.code, tuple(second)

    first, code, second = await node.db.run(work)
    assert code == "L3.IP_IN_USE"
    assert first[:3] == ("10.0.0.15", "10.0.0.1", "255.255.255.0")
    assert second[0] == "10.0.0.11"  # first-available skips the taken 10.0.0.10
    assert (await capacity(client, l3))["usedIpAddressNumber"] == 3  # both committed

    released = await node.db.run(release_ips_for, "a" * 32)
    assert sorted(released) == [(l3, "10.0.0.11"), (l3, "10.0.0.15")]
    assert await node.db.run(release_ip, l3, taken) is True
    assert (await capacity(client, l3))["usedIpAddressNumber"] == 0


async def test_quota_on_ips_of_normal_accounts(node, client):
    l3 = await make_l3(client)
    await add_range(client, l3, "10.0.0.10", "10.0.0.20")
    alice = await client.new_account("alice")
    await client.api("UpdateQuota", {"identityUuid": alice.account_uuid, "name": "l3.ipNum", "value": 2})
    account = Account(uuid=alice.account_uuid, name="alice", is_admin=False)

    def allocate_for_alice(session) -> str:
        return allocate_ip(session, l3, account.uuid, quota_account=account).ip

    await node.db.run(allocate_for_alice)
    await node.db.run(allocate_for_alice)
    with pytest.raises(RingstackError) as err:
        await node.db.run(allocate_for_alice)
    assert err.value.code == "IDENTITY.QUOTA_EXCEEDED"
    assert err.value.details["used"] == 2
    # admins have no quota, and addresses an admin allocates count for their owner only
    await allocate(client, l3, ownerAccountUuid=alice.account_uuid)
    assert (await capacity(client, l3))["usedIpAddressNumber"] == 3


async def test_a_resumed_allocation_returns_the_same_address(node, client):
    from bus.envelope import Envelope
    from mgmt.core.service import CallContext
    from schema.api.network_ipam import InternalAllocateIp

    l3 = await make_l3(client)
    await add_range(client, l3, "10.0.0.10", "10.0.0.20")
    first = await allocate(client, l3)
    ipam_service = next(s for s in node.services if s.name == "ipam")
    ctx = CallContext(Envelope(name="InternalAllocateIp", kind="api"), SYSTEM_ACCOUNT, resumed=True)
    msg = InternalAllocateIp(l3_network_uuid=l3, resource_uuid=first["uuid"])
    again = (await ipam_service.allocate(msg, ctx)).inventory
    assert (again.uuid, again.ip) == (first["uuid"], first["ip"])
    assert (await capacity(client, l3))["usedIpAddressNumber"] == 1
