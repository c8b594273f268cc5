"""The simulator process speaking the agent protocol on the real broker."""

from __future__ import annotations

import asyncio
import uuid as uuidlib

import pytest

from bus.envelope import Envelope
from bus.errors import RingstackError, Sys
from mgmt.core.agents import AgentClient
from schema.agent import (
    AgentErrors,
    ConnectCommand,
    ConnectReply,
    DestroyVmCommand,
    L2Spec,
    MigrateVmCommand,
    NicSpec,
    PingCommand,
    PingReply,
    StartVmCommand,
    StopVmCommand,
    VmSpec,
    VmStateReply,
    VmSyncCommand,
    VmSyncReply,
    VolumeSpec,
)
from tests.support.simulator import SimulatorProcess, control

GB = 1 << 30


@pytest.fixture
def simulator(broker_url, namespace):
    proc = SimulatorProcess(broker_url, namespace).wait_ready()
    try:
        yield proc
    finally:
        proc.close()


@pytest.fixture
async def hosts(simulator, client):
    uuids = [uuidlib.uuid4().hex for _ in range(3)]
    await control(
        client, "add_hosts", {"hosts": [{"uuid": u, "cpuNum": 4, "memorySize": 8 * GB} for u in uuids]}
    )
    return uuids


def vm_spec(cpu: int = 1, memory: int = GB) -> VmSpec:
    uuid = uuidlib.uuid4().hex
    l2 = L2Spec(
        uuid=uuidlib.uuid4().hex, type="L2NoVlanNetwork", physical_interface="eth0", bridge_name="br_eth0"
    )
    return VmSpec(
        uuid=uuid,
        name=f"vm-{uuid[:6]}",
        cpu_num=cpu,
        memory_size=memory,
        root_volume=VolumeSpec(uuid=uuidlib.uuid4().hex, install_path="/ps/root.qcow2", size=GB, device_id=0),
        nics=[
            NicSpec(
                uuid=uuidlib.uuid4().hex,
                mac="fa:16:3e:00:00:01",
                ip="10.0.0.5",
                l3_network_uuid=uuidlib.uuid4().hex,
                l2=l2,
                device_id=0,
                default=True,
            )
        ],
    )


async def test_connect_ping_and_vm_lifecycle_are_idempotent(hosts, client):
    agents = AgentClient(client, default_timeout=10)
    host = hosts[0]
    connected = await agents.call(ConnectCommand(host_uuid=host), ConnectReply)
    assert connected.facts.cpu_num == 4 and connected.facts.hypervisor == "simulator" and connected.vms == []
    assert (await agents.call(PingCommand(host_uuid=host), PingReply)).host_uuid == host

    spec = vm_spec()
    for _ in range(2):  # starting a running VM succeeds
        assert (await agents.call(StartVmCommand(host_uuid=host, vm=spec), VmStateReply)).state == "Running"
    for _ in range(2):
        assert (
            await agents.call(StopVmCommand(host_uuid=host, vm_uuid=spec.uuid), VmStateReply)
        ).state == "Stopped"
    synced = await agents.call(VmSyncCommand(host_uuid=host), VmSyncReply)
    assert [(v.uuid, v.state) for v in synced.vms] == [(spec.uuid, "Stopped")]
    for _ in range(2):  # destroying a missing VM succeeds
        assert (
            await agents.call(DestroyVmCommand(host_uuid=host, vm_uuid=spec.uuid), VmStateReply)
        ).state == "Absent"


async def test_capacity_is_enforced_and_migration_moves_the_vm(hosts, client):
    agents = AgentClient(client, default_timeout=10)
    big = vm_spec(cpu=3, memory=6 * GB)
    await agents.call(StartVmCommand(host_uuid=hosts[0], vm=big), VmStateReply)
    with pytest.raises(RingstackError) as err:
        await agents.call(StartVmCommand(host_uuid=hosts[0], vm=vm_spec(cpu=2)), VmStateReply)
    assert err.value.code == AgentErrors.INSUFFICIENT_CAPACITY
    moved = MigrateVmCommand(
        host_uuid=hosts[0], vm_uuid=big.uuid, destination_host_uuid=hosts[1], destination_uri="sim"
    )
    for _ in range(2):  # a repeated migration finds the VM already there
        assert (await agents.call(moved, VmStateReply)).state == "Running"
    assert (await agents.call(VmSyncCommand(host_uuid=hosts[0]), VmSyncReply)).vms == []
    assert [v.uuid for v in (await agents.call(VmSyncCommand(host_uuid=hosts[1]), VmSyncReply)).vms] == [
        big.uuid
    ]


async def test_injected_faults(hosts, client):
    agents = AgentClient(client, default_timeout=10)
    host = hosts[2]
    await control(
        client, "configure", {"hostUuid": host, "command": "agent.vm.start", "fault": {"failNth": [2]}}
    )
    await agents.call(StartVmCommand(host_uuid=host, vm=vm_spec()), VmStateReply)
    with pytest.raises(RingstackError) as err:
        await agents.call(StartVmCommand(host_uuid=host, vm=vm_spec()), VmStateReply)
    assert err.value.code == AgentErrors.INJECTED_FAILURE
    await agents.call(StartVmCommand(host_uuid=host, vm=vm_spec()), VmStateReply)

    await control(client, "configure", {"hostUuid": host, "command": "agent.ping", "fault": {"hang": True}})
    with pytest.raises(RingstackError) as err:
        await agents.call(PingCommand(host_uuid=host), PingReply, timeout=0.5)
    assert err.value.code == Sys.TIMEOUT

    swapped = uuidlib.uuid4().hex
    await control(
        client,
        "configure",
        {"hostUuid": host, "command": "agent.ping", "fault": None, "pretendUuid": swapped},
    )
    assert (await agents.call(PingCommand(host_uuid=host), PingReply)).host_uuid == swapped


async def test_a_crash_fault_kills_the_process(hosts, client, simulator):
    await control(
        client, "configure", {"hostUuid": hosts[0], "command": "agent.vm.start", "fault": {"crashNth": 1}}
    )
    with pytest.raises(RingstackError) as err:
        await AgentClient(client).call(
            StartVmCommand(host_uuid=hosts[0], vm=vm_spec()), VmStateReply, timeout=2
        )
    assert err.value.code == Sys.TIMEOUT
    assert await asyncio.to_thread(simulator.proc.wait, 10) == 17


async def test_state_changes_behind_our_back_are_reported(hosts, client):
    got: asyncio.Queue[Envelope] = asyncio.Queue()

    async def on_report(env: Envelope):
        got.put_nowait(env)

    await client.start_consumer(
        client.consume(client.topology.event_queue("reports", "agent.*.vm_state"), on_report)
    )
    spec = vm_spec()
    await AgentClient(client).call(StartVmCommand(host_uuid=hosts[0], vm=spec), VmStateReply)
    await control(client, "set_vm_state", {"hostUuid": hosts[0], "vmUuid": spec.uuid, "state": "Stopped"})
    report = await asyncio.wait_for(got.get(), 10)
    assert report.body == {
        "hostUuid": hosts[0],
        "vmUuid": spec.uuid,
        "state": "Stopped",
        "reason": "simulated",
    }
