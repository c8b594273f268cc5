"""One conformance suite for every hypervisor agent: the KVM agent (libvirt's test driver, ip
commands in a namespace) and the simulator answer the protocol of ``schema.agent.HypervisorAgent``
the same way, on the real broker: every command is served, versions are checked on every call,
bad input gets the same structured errors, every mutating command is idempotent and says
``changed`` the first time only.

A new agent kind (the virtual router) gets a suite of its own commands; the shared part (connect,
ping, versions, wrong host) is the ``base`` tests here, written against ``AgentInterface``.
"""

from __future__ import annotations

import uuid as uuidlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agents.kvm.config import AgentConfig
from agents.simulator.simulator import SimHostSpec, Simulator
from bus.aio import AsyncBus
from bus.envelope import Envelope
from bus.errors import RingstackError, Sys
from bus.topology import Topology
from mgmt.core.agents import AgentClient
from schema.agent import (
    AgentErrors,
    ApplyFlatEipCommand,
    BridgeReply,
    ConnectCommand,
    ConnectReply,
    CreateVolumeCommand,
    DeleteBridgeCommand,
    DeleteVolumeCommand,
    DestroyVmCommand,
    EmptyReply,
    EnsureBridgeCommand,
    FlatEipReply,
    FlatEipSpec,
    HypervisorAgent,
    NicAttachCommand,
    NicDetachCommand,
    PingCommand,
    PingReply,
    RebootVmCommand,
    StartVmCommand,
    StopVmCommand,
    VmStateReply,
    VmSyncCommand,
    VmSyncReply,
    VolumeAttachCommand,
    VolumeDetachCommand,
    VolumeReply,
)
from schema.agent_base import commands_of
from tests.system.kvmsupport import (
    GiB,
    HostNetwork,
    InProcessAgent,
    delete_agent_queues,
    l2,
    libvirt_test_uri,
    nic,
    vm_spec,
    volume,
)

VERSION = HypervisorAgent.VERSION


@dataclass
class Subject:
    kind: str
    host_uuid: str
    agents: AgentClient
    ps_root: Path

    async def raw(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """A command as bytes on the wire would carry it, without the client's checks."""
        queue = self.agents.bus.topology.agent_queue(self.host_uuid).name
        return await self.agents.bus.call(queue, name, body, timeout=30)

    async def call(self, command: Any, reply: Any) -> Any:
        return await self.agents.call(command, reply)


@pytest.fixture(params=["kvm", "simulator"])
async def subject(request, tmp_path, client, broker_url, namespace) -> AsyncIterator[Subject]:
    host = uuidlib.uuid4().hex
    agents = AgentClient(client, default_timeout=30)
    if request.param == "simulator":
        topology = Topology(namespace)
        bus = AsyncBus(
            broker_url,
            topology,
            process_name=f"sim-{host[:8]}",
            reply_exchange=topology.replies_exchange.name,
        )
        sim = Simulator(bus)
        await sim.start()
        try:
            await sim.add_host(SimHostSpec(uuid=host, cpu_num=4, memory_size=8 * GiB))
            yield Subject("simulator", host, agents, tmp_path / "ps")
        finally:
            await bus.close()
            delete_agent_queues(namespace, host)
        return
    hostnet = HostNetwork.create()
    config = AgentConfig(
        host_uuid=host,
        broker_url=broker_url,
        namespace=namespace,
        libvirt_uri=libvirt_test_uri(tmp_path),
        domain_type="qemu",
        mount_dir=str(tmp_path / "mounts"),
        netns=hostnet.host.name,
        stop_timeout=5,
        flat_dir=str(tmp_path / "flat"),
    )
    kvm = await InProcessAgent.start(config, client)
    try:
        yield Subject("kvm", host, agents, tmp_path / "ps")
    finally:
        await kvm.close()
        delete_agent_queues(namespace, host)
        hostnet.close()


def data_volume(subject: Subject, volume_uuid: str | None = None) -> CreateVolumeCommand:
    return CreateVolumeCommand(
        host_uuid=subject.host_uuid,
        volume_uuid=volume_uuid or uuidlib.uuid4().hex,
        primary_storage_uuid="a" * 32,
        primary_storage_url=str(subject.ps_root),
        primary_storage_type="LocalStorage",
        size=GiB,
    )


# ---------------------------------------------------------------------- the base every agent shares


async def test_every_protocol_command_is_served(subject):
    """Each command of the interface reaches a method: an empty body is refused for its fields
    (INVALID_ARGUMENT), never as an unknown command."""
    for name, spec in commands_of(HypervisorAgent).items():
        body: dict[str, Any] = {"protocolVersion": VERSION}
        with pytest.raises(RingstackError) as err:
            await subject.raw(name, body)
        assert err.value.code == Sys.INVALID_ARGUMENT, (name, err.value)
        assert "hostUuid" in str(err.value), name
        assert spec.request.__name__ in str(err.value)


async def test_connect_and_ping_carry_the_version_and_name_the_host(subject):
    connected = await subject.call(ConnectCommand(host_uuid=subject.host_uuid), ConnectReply)
    assert connected.host_uuid == subject.host_uuid and connected.protocol_version == VERSION
    assert connected.changed is False and connected.facts.cpu_num == 4
    pong = await subject.call(PingCommand(host_uuid=subject.host_uuid), PingReply)
    assert (pong.host_uuid, pong.protocol_version, pong.changed) == (subject.host_uuid, VERSION, False)


@pytest.mark.parametrize("name", ["agent.ping", "agent.connect", "agent.vm.sync", "agent.vm.destroy"])
@pytest.mark.parametrize("version", [None, 0, VERSION + 1])
async def test_every_command_checks_the_protocol_version(subject, name, version):
    body: dict[str, Any] = {"hostUuid": subject.host_uuid, "vmUuid": "f" * 32}
    if name in ("agent.ping", "agent.connect", "agent.vm.sync"):
        del body["vmUuid"]
    if version is not None:
        body["protocolVersion"] = version
    with pytest.raises(RingstackError) as err:
        await subject.raw(name, body)
    assert err.value.code == AgentErrors.PROTOCOL_MISMATCH
    assert err.value.details["agentProtocolVersion"] == VERSION
    assert f"not {version}" in str(err.value)


async def test_a_command_for_another_host_is_refused(subject):
    with pytest.raises(RingstackError) as err:
        await subject.raw("agent.ping", {"hostUuid": "0" * 32, "protocolVersion": VERSION})
    assert err.value.code == AgentErrors.WRONG_HOST
    assert err.value.details["agentHostUuid"] == subject.host_uuid


@pytest.mark.parametrize(
    ("name", "body", "code", "text"),
    [
        ("agent.nope", {}, Sys.UNKNOWN_MESSAGE, "agent.nope"),
        ("agent.vm.start", {"hostUuid": "HOST"}, Sys.INVALID_ARGUMENT, "vm"),
        (
            "agent.vm.stop",
            {"hostUuid": "HOST", "vmUuid": "x" * 32, "type": "violent"},
            Sys.INVALID_ARGUMENT,
            "type",
        ),
        ("agent.ping", {"hostUuid": "not a uuid"}, Sys.INVALID_ARGUMENT, "hostUuid"),
        ("agent.vm.reboot", {"hostUuid": "HOST", "vmUuid": "f" * 32}, AgentErrors.VM_NOT_FOUND, "f" * 32),
        ("agent.vm.attach_volume", "NO_VM", AgentErrors.VM_NOT_FOUND, "is not on host"),
        ("agent.volume.delete", {"hostUuid": "HOST"}, Sys.INVALID_ARGUMENT, "installPath or volumeUuid"),
    ],
)
async def test_bad_commands_get_the_same_clear_errors_and_the_agent_stays_up(subject, name, body, code, text):
    if body == "NO_VM":
        body = VolumeAttachCommand(
            host_uuid=subject.host_uuid, vm_uuid="f" * 32, volume=volume("/ps/volumes/x.qcow2", 1, "Data")
        ).to_wire()
    body = {k: (subject.host_uuid if v == "HOST" else v) for k, v in body.items()}
    body.setdefault("protocolVersion", VERSION)
    with pytest.raises(RingstackError) as err:
        await subject.raw(name, body)
    assert err.value.code == code
    assert text in str(err.value)
    pong = await subject.call(PingCommand(host_uuid=subject.host_uuid), PingReply)
    assert pong.host_uuid == subject.host_uuid


async def test_unknown_fields_are_ignored_so_a_newer_node_can_talk_to_an_older_agent(subject):
    # The tolerant reader (ARCHITECTURE, wire protocol): only client API input refuses unknown fields.
    reply = await subject.raw(
        "agent.ping", {"hostUuid": subject.host_uuid, "protocolVersion": VERSION, "fieldFromTheFuture": 1}
    )
    assert reply["hostUuid"] == subject.host_uuid


# ---------------------------------------------------------------------- hypervisor commands


async def twice(subject: Subject, command: Any, reply: Any) -> list[Any]:
    return [await subject.call(command, reply) for _ in range(2)]


async def test_vm_commands_are_idempotent_and_say_changed_once(subject):
    host = subject.host_uuid
    spec = vm_spec(str(subject.ps_root / "volumes" / "root.qcow2"), nics=[nic("fa:16:3e:00:00:07")])
    started = await twice(subject, StartVmCommand(host_uuid=host, vm=spec), VmStateReply)
    assert [(r.state, r.changed) for r in started] == [("Running", True), ("Running", False)]
    synced = await subject.call(VmSyncCommand(host_uuid=host), VmSyncReply)
    assert [(v.uuid, v.state) for v in synced.vms] == [(spec.uuid, "Running")]

    stop = StopVmCommand(host_uuid=host, vm_uuid=spec.uuid, type="cold")
    stopped = await twice(subject, stop, VmStateReply)
    assert [(r.state, r.changed) for r in stopped] == [("Stopped", True), ("Stopped", False)]

    # devices while stopped: libvirt's test driver does not hot-plug
    data = volume(str(subject.ps_root / "volumes" / f"{uuidlib.uuid4().hex}.qcow2"), 1, "Data")
    attach = VolumeAttachCommand(host_uuid=host, vm_uuid=spec.uuid, volume=data)
    assert [r.changed for r in await twice(subject, attach, EmptyReply)] == [True, False]
    detach = VolumeDetachCommand(host_uuid=host, vm_uuid=spec.uuid, volume=data)
    assert [r.changed for r in await twice(subject, detach, EmptyReply)] == [True, False]
    second = nic("fa:16:3e:00:00:08", device_id=1)
    attach_nic = NicAttachCommand(host_uuid=host, vm_uuid=spec.uuid, nic=second)
    assert [r.changed for r in await twice(subject, attach_nic, EmptyReply)] == [True, False]
    detach_nic = NicDetachCommand(host_uuid=host, vm_uuid=spec.uuid, nic=second)
    assert [r.changed for r in await twice(subject, detach_nic, EmptyReply)] == [True, False]

    assert (await subject.call(StartVmCommand(host_uuid=host, vm=spec), VmStateReply)).changed is True
    rebooted = await subject.call(RebootVmCommand(host_uuid=host, vm_uuid=spec.uuid), VmStateReply)
    assert (rebooted.state, rebooted.changed) == ("Running", True)
    destroyed = await twice(subject, DestroyVmCommand(host_uuid=host, vm_uuid=spec.uuid), VmStateReply)
    assert [(r.state, r.changed) for r in destroyed] == [("Absent", True), ("Absent", False)]
    assert (await subject.call(VmSyncCommand(host_uuid=host), VmSyncReply)).vms == []


@pytest.mark.parametrize("by", ["path", "uuid"])
async def test_volumes_are_idempotent_and_deleted_by_path_or_uuid(subject, by):
    host = subject.host_uuid
    create = data_volume(subject)
    made = await twice(subject, create, VolumeReply)
    assert [r.changed for r in made] == [True, False]
    assert made[0].install_path == made[1].install_path
    if by == "path":
        delete = DeleteVolumeCommand(host_uuid=host, install_path=made[0].install_path)
    else:  # the create's answer was lost: delete what it made for this uuid on that storage
        delete = DeleteVolumeCommand(
            host_uuid=host,
            volume_uuid=create.volume_uuid,
            primary_storage_uuid=create.primary_storage_uuid,
            primary_storage_url=create.primary_storage_url,
            primary_storage_type=create.primary_storage_type,
        )
    assert [r.changed for r in await twice(subject, delete, EmptyReply)] == [True, False]
    # the volume is gone: creating it again makes it again
    assert (await subject.call(create, VolumeReply)).changed is True


async def test_bridges_are_idempotent(subject):
    network = l2("br_eth0")
    ensured = await twice(subject, EnsureBridgeCommand(host_uuid=subject.host_uuid, l2=network), BridgeReply)
    assert [(r.bridge_name, r.changed) for r in ensured] == [("br_eth0", True), ("br_eth0", False)]
    deleted = await twice(subject, DeleteBridgeCommand(host_uuid=subject.host_uuid, l2=network), EmptyReply)
    assert [r.changed for r in deleted] == [True, False]


async def test_flat_eips_are_idempotent_and_need_their_bridges(subject):
    host = subject.host_uuid
    spec = FlatEipSpec(
        eip_uuid=uuidlib.uuid4().hex,
        vip_ip="203.0.113.5",
        vip_netmask="255.255.255.0",
        public_bridge="br_eth0",
        guest_ip="10.0.0.5",
        guest_mac="fa:16:3e:00:00:09",
        guest_netmask="255.255.255.0",
        guest_gateway="10.0.0.1",
        guest_bridge="br_eth0",
        guest_uplink="eth0",
    )
    apply = ApplyFlatEipCommand(host_uuid=host, eips=[spec])
    with pytest.raises(RingstackError) as err:
        await subject.call(apply, FlatEipReply)
    assert err.value.code == AgentErrors.HYPERVISOR_ERROR and "br_eth0" in str(err.value)
    await subject.call(EnsureBridgeCommand(host_uuid=host, l2=l2("br_eth0")), BridgeReply)
    try:
        applied = await twice(subject, apply, FlatEipReply)
        assert [(r.changed, r.eips) for r in applied] == [(True, 1), (False, 1)]
    finally:
        removed = await twice(subject, ApplyFlatEipCommand(host_uuid=host), FlatEipReply)
    assert [(r.changed, r.eips) for r in removed] == [(True, 0), (False, 0)]


async def test_the_client_refuses_a_reply_of_another_version(client, namespace):
    """The management side checks the version of every reply, not only connect's: an agent
    replaced by another release behind its back (here: whatever answers on its queue) is refused."""
    host = uuidlib.uuid4().hex

    async def other_release(env: Envelope) -> dict[str, Any]:
        return {
            "hostUuid": host,
            "agentVersion": "ringstack-kvm-agent/9",
            "uptime": 1.0,
            "protocolVersion": 9,
        }

    consumer = client.consume(client.topology.agent_queue(host), other_release)
    await client.start_consumer(consumer)
    try:
        with pytest.raises(RingstackError) as err:
            await AgentClient(client, default_timeout=30).call(PingCommand(host_uuid=host), PingReply)
        assert err.value.code == AgentErrors.PROTOCOL_MISMATCH
        assert err.value.details["agentProtocolVersion"] == 9
    finally:
        await client.cancel(consumer)
        delete_agent_queues(namespace, host)
