"""Hosts through the public API: KVM and simulator hosts, state machine vs status, secrets that
never come back, and race-free CPU/memory reservation."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from bus.errors import RingstackError, Sys
from mgmt.core.capacity import Capacity, release_host, reserve_host
from schema.db.host import Host, HostSecret

UNKNOWN = "f" * 32
GiB = 1 << 30
PASSWORD = "s3cret-Pa55w0rd-that-must-not-leak"
SSH_KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nnot-a-real-key-but-secret-material\n-----END OPENSSH PRIVATE KEY-----"


@pytest.fixture(autouse=True)
def _simulator_serves_the_hosts(simulator):
    """Simulator hosts connect to a simulator; one runs in every test of this module."""


async def _cluster(client, hypervisor="Simulator"):
    zone = (await client.api("CreateZone", {"name": "z"}))["inventory"]
    body = {"zoneUuid": zone["uuid"], "name": "c", "hypervisorType": hypervisor}
    return (await client.api("CreateCluster", body))["inventory"]


async def _sim_host(client, cluster_uuid, ip="127.3.0.1", cpu=8, memory=16 * GiB, name="h"):
    body = {
        "clusterUuid": cluster_uuid,
        "name": name,
        "managementIp": ip,
        "totalCpu": cpu,
        "totalMemorySize": memory,
    }
    return (await client.api("AddSimulatorHost", body))["inventory"]


async def _kvm_host(client, cluster_uuid, ip="127.3.1.1", **extra):
    body = {"clusterUuid": cluster_uuid, "name": "kvm", "managementIp": ip, "password": PASSWORD, **extra}
    return (await client.api("AddKVMHost", body))["inventory"]


async def _event_log(client, pattern):
    received: asyncio.Queue = asyncio.Queue()

    async def on_event(env):
        received.put_nowait((env.name, env.body))

    await client.start_consumer(client.consume(client.topology.event_queue("test", pattern), on_event))
    return received


async def test_simulator_host_is_connected_with_the_capacity_asked(node, client):
    cluster = await _cluster(client)
    host = await _sim_host(client, cluster["uuid"], cpu=16, memory=64 * GiB)
    assert host["status"] == "Connected"
    assert host["state"] == "Enabled"
    assert host["hypervisorType"] == "Simulator"
    assert host["zoneUuid"] == cluster["zoneUuid"]
    assert (host["totalCpu"], host["availableCpu"]) == (16, 16)
    assert (host["totalMemorySize"], host["availableMemorySize"]) == (64 * GiB, 64 * GiB)
    assert "statusReason" not in host

    reconnected = (await client.api("ReconnectHost", {"uuid": host["uuid"]}))["inventory"]
    assert reconnected["status"] == "Connected"
    found = await client.api(
        "QueryHost", {"conditions": [{"name": "managementIp", "op": "=", "value": "127.3.0.1"}]}
    )
    assert [h["uuid"] for h in found["inventories"]] == [host["uuid"]]


@pytest.fixture
def closed_port():
    """An address and port where nothing listens: a socket bound there without listening makes
    the kernel refuse every connection at once (loopback only: tests never SSH elsewhere)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.3.1.1", 0))
    try:
        yield sock.getsockname()
    finally:
        sock.close()


async def test_kvm_host_that_ssh_cannot_reach_is_disconnected_and_its_secrets_never_come_back(
    node, client, caplog, closed_port
):
    caplog.set_level(logging.DEBUG)
    events = await _event_log(client, "host.#")
    cluster = await _cluster(client, "KVM")
    ip, port = closed_port
    started = time.monotonic()
    with pytest.raises(RingstackError) as err:
        await _kvm_host(client, cluster["uuid"], ip=ip, sshPort=port, username="admin")
    # the deployment stops at its first step, at once, and says where and why
    assert time.monotonic() - started < 5
    assert err.value.code == "HOST.DEPLOY_FAILED"
    assert err.value.details["step"] == "ssh" and "cannot reach admin@" in err.value.details["reason"]
    assert err.value.details["status"] == "Disconnected"
    assert "step ssh" in err.value.message
    uuid = err.value.details["uuid"]
    host = (await client.api("QueryHost", {"conditions": [{"name": "uuid", "op": "=", "value": uuid}]}))[
        "inventories"
    ][0]
    assert host["status"] == "Disconnected"
    assert host["statusReason"].startswith("HOST.DEPLOY_FAILED: deploying the KVM agent failed at step ssh:")
    assert (host["sshPort"], host["username"]) == (port, "admin")
    assert (host["totalCpu"], host["totalMemorySize"]) == (0, 0)  # until an agent reports them

    with pytest.raises(RingstackError) as again:
        await client.api("ReconnectHost", {"uuid": uuid})
    assert again.value.code == "HOST.DEPLOY_FAILED" and again.value.details["step"] == "ssh"

    await client.api("UpdateKVMHost", {"uuid": uuid, "sshKey": SSH_KEY, "sshPort": 22})
    queried = await client.api("QueryHost", {})
    replies = [err.value.to_wire(), host, again.value.to_wire(), queried]
    seen = [await asyncio.wait_for(events.get(), 5) for _ in range(5)]
    assert [(n, b["inventory"].get("status")) for n, b in seen] == [
        ("host.created", "Connecting"),
        ("host.status", "Disconnected"),
        ("host.status", "Connecting"),  # ReconnectHost
        ("host.status", "Disconnected"),
        ("host.updated", "Disconnected"),  # UpdateKVMHost
    ]
    # ringstack's own log lines (aiormq's DEBUG frame dumps show every body on the wire; a node
    # must never run those loggers at DEBUG)
    ours = "\n".join(
        r.getMessage() for r in caplog.records if r.name.split(".")[0] in ("bus", "mgmt", "schema")
    )
    everything = repr(replies) + repr(seen) + ours
    assert PASSWORD not in everything
    assert "secret-material" not in everything
    assert "password" not in repr(queried).lower()

    # stored, and only where it belongs
    engine = create_engine(node.config.database_url)
    try:
        with Session(engine) as s:
            secret = s.get(HostSecret, uuid)
            assert secret is not None
            assert (secret.password, secret.ssh_key) == (None, SSH_KEY)  # the key replaced the password
    finally:
        engine.dispose()


async def test_host_events_follow_status_and_state(node, client):
    events = await _event_log(client, "host.#")
    cluster = await _cluster(client)
    host = await _sim_host(client, cluster["uuid"])
    await client.api("ChangeHostState", {"uuid": host["uuid"], "stateEvent": "maintain"})
    await client.api("DeleteHost", {"uuid": host["uuid"]})
    seen = [await asyncio.wait_for(events.get(), 5) for _ in range(5)]
    assert [n for n, _ in seen] == ["host.created", "host.status", "host.state", "host.state", "host.deleted"]
    assert seen[0][1]["inventory"]["status"] == "Connecting"
    assert seen[1][1]["inventory"]["status"] == "Connected"
    assert [b["inventory"]["state"] for _, b in seen[2:4]] == ["PreMaintenance", "Maintenance"]


async def test_host_state_machine(node, client):
    cluster = await _cluster(client)
    host = await _sim_host(client, cluster["uuid"])
    uuid = host["uuid"]

    async def change(event):
        return (await client.api("ChangeHostState", {"uuid": uuid, "stateEvent": event}))["inventory"]

    assert (await change("disable"))["state"] == "Disabled"
    assert (await change("disable"))["state"] == "Disabled"  # allowed, no change
    assert (await change("maintain"))["state"] == "Maintenance"
    with pytest.raises(RingstackError) as err:
        await change("maintain")
    assert err.value.code == "HOST.INVALID_STATE_TRANSITION"
    assert "Maintenance" in err.value.message
    assert err.value.details["state"] == "Maintenance"
    maintained = (await client.api("QueryHost", {}))["inventories"][0]
    assert maintained["state"] == "Maintenance"
    assert maintained["status"] == "Connected"  # state and status are separate
    assert (await change("enable"))["state"] == "Enabled"
    assert (await change("maintain"))["state"] == "Maintenance"
    assert (await change("disable"))["state"] == "Disabled"


async def test_host_state_machine_from_pre_maintenance(node, client):
    """A maintain that stopped half-way (PreMaintenance) can be finished, enabled or disabled."""
    cluster = await _cluster(client)
    host = await _sim_host(client, cluster["uuid"])
    engine = create_engine(node.config.database_url)
    try:
        with Session(engine) as s, s.begin():
            s.get(Host, host["uuid"]).state = "PreMaintenance"
    finally:
        engine.dispose()
    done = (await client.api("ChangeHostState", {"uuid": host["uuid"], "stateEvent": "maintain"}))[
        "inventory"
    ]
    assert done["state"] == "Maintenance"


async def test_add_host_errors(node, client):
    sim = await _cluster(client)
    zone_uuid = sim["zoneUuid"]
    kvm = (await client.api("CreateCluster", {"zoneUuid": zone_uuid, "name": "k", "hypervisorType": "KVM"}))[
        "inventory"
    ]
    first = await _sim_host(client, sim["uuid"], ip="127.3.0.1")

    with pytest.raises(RingstackError) as err:
        await _sim_host(client, sim["uuid"], ip="127.3.0.1", name="dup")
    assert err.value.code == "HOST.MANAGEMENT_IP_IN_USE"
    with pytest.raises(RingstackError) as err:
        await _kvm_host(client, kvm["uuid"], ip="127.3.0.1")  # unique across clusters too
    assert err.value.code == "HOST.MANAGEMENT_IP_IN_USE"
    with pytest.raises(RingstackError) as err:
        await _kvm_host(client, sim["uuid"], ip="127.3.0.9")
    assert err.value.code == "HOST.HYPERVISOR_MISMATCH"
    with pytest.raises(RingstackError) as err:
        await _sim_host(client, kvm["uuid"], ip="127.3.0.9")
    assert err.value.code == "HOST.HYPERVISOR_MISMATCH"
    with pytest.raises(RingstackError) as err:
        await _sim_host(client, UNKNOWN, ip="127.3.0.9")
    assert err.value.code == Sys.NOT_FOUND

    second = await _sim_host(client, sim["uuid"], ip="127.3.0.2", name="h2")
    with pytest.raises(RingstackError) as err:
        await client.api("UpdateHost", {"uuid": second["uuid"], "managementIp": "127.3.0.1"})
    assert err.value.code == "HOST.MANAGEMENT_IP_IN_USE"
    same = (
        await client.api("UpdateHost", {"uuid": first["uuid"], "managementIp": "127.3.0.1", "name": "n"})
    )["inventory"]
    assert (same["managementIp"], same["name"]) == ("127.3.0.1", "n")
    moved = (await client.api("UpdateHost", {"uuid": second["uuid"], "managementIp": "127.3.0.3"}))[
        "inventory"
    ]
    assert moved["managementIp"] == "127.3.0.3"

    with pytest.raises(RingstackError) as err:
        await client.api("UpdateKVMHost", {"uuid": first["uuid"], "password": "x"})
    assert err.value.code == "HOST.NOT_KVM_HOST"
    for name, body in [
        ("UpdateHost", {"uuid": UNKNOWN, "name": "x"}),
        ("UpdateKVMHost", {"uuid": UNKNOWN, "sshPort": 22}),
        ("ChangeHostState", {"uuid": UNKNOWN, "stateEvent": "enable"}),
        ("ReconnectHost", {"uuid": UNKNOWN}),
    ]:
        with pytest.raises(RingstackError) as err:
            await client.api(name, body)
        assert err.value.code == Sys.NOT_FOUND, name
    assert (await client.api("QueryHost", {"count": True}))["total"] == 2


async def test_delete_host(node, client):
    cluster = await _cluster(client)
    host = await _sim_host(client, cluster["uuid"])
    assert await client.api("DeleteHost", {"uuid": host["uuid"]}) == {}
    assert await client.api("DeleteHost", {"uuid": host["uuid"]}) == {}  # a retried delete is fine
    assert (await client.api("QueryHost", {"count": True}))["total"] == 0
    again = await _sim_host(client, cluster["uuid"])  # its management IP is free again
    assert again["managementIp"] == host["managementIp"]


async def test_host_validation_errors_name_the_field(node, client):
    c = "a" * 32
    sim = {"clusterUuid": c, "name": "h", "managementIp": "127.3.0.1", "totalCpu": 4, "totalMemorySize": GiB}
    kvm = {"clusterUuid": c, "name": "h", "managementIp": "127.3.0.1", "password": "pw"}
    cases = [
        ("AddSimulatorHost", {**sim, "clusterUuid": "x"}, "clusterUuid"),
        ("AddSimulatorHost", {**sim, "name": ""}, "name"),
        ("AddSimulatorHost", {**sim, "managementIp": "127.3.0.256"}, "managementIp"),
        ("AddSimulatorHost", {**sim, "managementIp": "not a host"}, "managementIp"),
        ("AddSimulatorHost", {**sim, "managementIp": ""}, "managementIp"),
        ("AddSimulatorHost", {**sim, "totalCpu": 0}, "totalCpu"),
        ("AddSimulatorHost", {**sim, "totalCpu": 100_001}, "totalCpu"),
        ("AddSimulatorHost", {**sim, "totalCpu": "many"}, "totalCpu"),
        ("AddSimulatorHost", {**sim, "totalMemorySize": 1024}, "totalMemorySize"),
        ("AddSimulatorHost", {**sim, "totalMemorySize": 1 << 51}, "totalMemorySize"),
        ("AddSimulatorHost", {k: v for k, v in sim.items() if k != "totalCpu"}, "totalCpu"),
        ("AddSimulatorHost", {**sim, "password": "x"}, "password"),
        ("AddKVMHost", {k: v for k, v in kvm.items() if k != "password"}, "(body)"),
        ("AddKVMHost", {**kvm, "sshKey": "k"}, "(body)"),
        ("AddKVMHost", {**kvm, "password": ""}, "password"),
        ("AddKVMHost", {**kvm, "sshPort": 0}, "sshPort"),
        ("AddKVMHost", {**kvm, "sshPort": 65536}, "sshPort"),
        ("AddKVMHost", {**kvm, "username": "root; rm -rf /"}, "username"),
        ("AddKVMHost", {**kvm, "username": ""}, "username"),
        ("AddKVMHost", {**kvm, "totalCpu": 4}, "totalCpu"),
        ("UpdateHost", {"uuid": c, "managementIp": "1.2.3"}, "managementIp"),
        ("UpdateKVMHost", {"uuid": c, "password": "a", "sshKey": "b"}, "(body)"),
        ("UpdateKVMHost", {"uuid": c, "sshPort": -1}, "sshPort"),
        ("ChangeHostState", {"uuid": c, "stateEvent": "preMaintain"}, "stateEvent"),
        ("ChangeHostState", {"uuid": c}, "stateEvent"),
        ("ReconnectHost", {"uuid": "x"}, "uuid"),
        ("DeleteHost", {"uuid": c, "deleteMode": "x"}, "deleteMode"),
        ("QueryHost", {"start": -1}, "start"),
    ]
    for name, body, field in cases:
        with pytest.raises(RingstackError) as err:
            await client.api(name, body)
        assert err.value.code == Sys.INVALID_ARGUMENT, (name, body)
        assert field in [e["field"] for e in err.value.details["errors"]], (name, body, err.value.details)
    # the validation message names what is wrong without echoing secrets
    with pytest.raises(RingstackError) as err:
        await client.api("AddKVMHost", {**kvm, "password": PASSWORD, "sshKey": SSH_KEY})
    assert "exactly one of password and sshKey" in err.value.message
    assert PASSWORD not in repr(err.value.to_wire())


async def test_host_apis_are_admin_only(node, client):
    cluster = await _cluster(client)
    host = await _sim_host(client, cluster["uuid"])
    user = await client.new_account("host-user")
    for name, body in [
        (
            "AddSimulatorHost",
            {
                "clusterUuid": cluster["uuid"],
                "name": "h",
                "managementIp": "127.3.9.9",
                "totalCpu": 1,
                "totalMemorySize": GiB,
            },
        ),
        (
            "AddKVMHost",
            {"clusterUuid": cluster["uuid"], "name": "h", "managementIp": "127.3.9.9", "password": "p"},
        ),
        ("UpdateHost", {"uuid": host["uuid"], "name": "x"}),
        ("ChangeHostState", {"uuid": host["uuid"], "stateEvent": "disable"}),
        ("ReconnectHost", {"uuid": host["uuid"]}),
        ("DeleteHost", {"uuid": host["uuid"]}),
        ("QueryHost", {}),
    ]:
        with pytest.raises(RingstackError) as err:
            await user.api(name, body)
        assert err.value.code == Sys.PERMISSION_DENIED, name
    assert (await client.api("QueryHost", {"count": True}))["total"] == 1


async def test_fifty_concurrent_host_reservations_never_over_commit(node, client):
    """50 threads, each on its own connection, reserve 3 CPUs + 1 GiB of a 100-CPU, 40 GiB host at
    the same moment: exactly 33 fit by CPU and only 40 by memory, so 33 succeed; the rest get
    CAPACITY.HOST_INSUFFICIENT and the host ends with 1 CPU left."""
    cluster = await _cluster(client)
    host = await _sim_host(client, cluster["uuid"], cpu=100, memory=40 * GiB)
    engine = create_engine(node.config.database_url, pool_size=50, max_overflow=0)
    barrier = threading.Barrier(50)
    outcomes: list[str] = []
    lock = threading.Lock()

    def reserve() -> None:
        with Session(engine) as session:
            session.connection()  # connect before the barrier, so the UPDATEs really race
            barrier.wait()
            try:
                reserve_host(session, host["uuid"], 3, GiB)
                session.commit()
                result = "ok"
            except RingstackError as exc:
                session.rollback()
                result = exc.code
        with lock:
            outcomes.append(result)

    try:
        threads = [threading.Thread(target=reserve) for _ in range(50)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert outcomes.count("ok") == 33
        assert outcomes.count(Capacity.HOST_INSUFFICIENT) == 17
        after = (await client.api("QueryHost", {}))["inventories"][0]
        assert (after["availableCpu"], after["availableMemorySize"]) == (1, 7 * GiB)

        with Session(engine) as session, session.begin():
            assert release_host(session, host["uuid"], 3, GiB) == (4, 8 * GiB)
            # a release never creates capacity beyond the total
            assert release_host(session, host["uuid"], 1000, 1000 * GiB) == (100, 40 * GiB)
            with pytest.raises(RingstackError) as err:
                reserve_host(session, UNKNOWN, 1, 1)
            assert err.value.code == Sys.NOT_FOUND
            assert session.scalar(select(Host.available_cpu).where(Host.uuid == host["uuid"])) == 100
    finally:
        engine.dispose()
