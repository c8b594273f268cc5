"""The KVM agent on the real broker against libvirt's test driver: every command of the protocol,
idempotence, bad input, and state reports from libvirt's lifecycle events.

Each test's agent has a private test-driver hypervisor (a file URI) and runs its `ip` commands in
network namespaces the test creates (a host with eth0, cabled to an outside switch), so bridges,
VLANs and address moves are real and checked with pings.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import threading
import uuid as uuidlib
from pathlib import Path

import pytest

from agents.kvm.config import AgentConfig
from bus.envelope import Envelope
from bus.errors import RingstackError, Sys
from schema.agent import (
    AgentErrors,
    BridgeReply,
    ConsoleCommand,
    ConsoleReply,
    CreateVolumeCommand,
    DeleteBridgeCommand,
    DeleteVolumeCommand,
    EmptyReply,
    EnsureBridgeCommand,
    MigrateVmCommand,
    NicAttachCommand,
    NicDetachCommand,
    PingCommand,
    PingReply,
    StartVmCommand,
    StopVmCommand,
    VmStateReply,
    VmSyncCommand,
    VmSyncReply,
    VolumeAttachCommand,
    VolumeDetachCommand,
    VolumeReply,
)
from tests.system.kvmsupport import (
    GiB,
    HostNetwork,
    InProcessAgent,
    delete_agent_queues,
    kernel_has_vlan,
    l2,
    libvirt_test_uri,
    make_image,
    nic,
    sh,
    vm_spec,
    volume,
)


@pytest.fixture
def hostnet():
    net = HostNetwork.create()
    try:
        yield net
    finally:
        net.close()


@pytest.fixture
async def kvm(tmp_path, client, broker_url, namespace, hostnet):
    config = AgentConfig(
        host_uuid=uuidlib.uuid4().hex,
        broker_url=broker_url,
        namespace=namespace,
        libvirt_uri=libvirt_test_uri(tmp_path),
        domain_type="qemu",
        mount_dir=str(tmp_path / "mounts"),
        netns=hostnet.host.name,
        stop_timeout=5,
    )
    agent = await InProcessAgent.start(config, client)
    try:
        yield agent
    finally:
        await agent.close()
        delete_agent_queues(namespace, config.host_uuid)


def ps_command(kvm, root: Path, **kw) -> CreateVolumeCommand:
    return CreateVolumeCommand(
        host_uuid=kvm.host_uuid,
        volume_uuid=kw.pop("volume_uuid", uuidlib.uuid4().hex),
        primary_storage_uuid=kw.pop("ps_uuid", "a" * 32),
        primary_storage_url=str(root),
        primary_storage_type=kw.pop("ps_type", "LocalStorage"),
        size=kw.pop("size", GiB),
        **kw,
    )


async def call(kvm, command, reply):
    return await kvm.client.call(command, reply)


async def test_volumes_and_nics_attach_to_a_stopped_vm_and_hotplug_is_refused_clearly(kvm, tmp_path):
    host = kvm.host_uuid
    spec = vm_spec(str(tmp_path / "root.qcow2"))
    await call(kvm, StartVmCommand(host_uuid=host, vm=spec), VmStateReply)
    data = volume(str(tmp_path / "data.qcow2"), device_id=1, kind="Data")
    extra = nic("fa:16:3e:00:00:09", device_id=1)

    with pytest.raises(RingstackError) as err:  # the test driver cannot hot-plug
        await call(kvm, VolumeAttachCommand(host_uuid=host, vm_uuid=spec.uuid, volume=data), EmptyReply)
    assert err.value.code == AgentErrors.HYPERVISOR_ERROR and "hot-plug" in err.value.message
    assert (await call(kvm, PingCommand(host_uuid=host), PingReply)).host_uuid == host

    await call(kvm, StopVmCommand(host_uuid=host, vm_uuid=spec.uuid, type="cold"), VmStateReply)
    volume_cmd = VolumeAttachCommand(host_uuid=host, vm_uuid=spec.uuid, volume=data)
    nic_cmd = NicAttachCommand(host_uuid=host, vm_uuid=spec.uuid, nic=extra)
    for _ in range(2):
        await call(kvm, volume_cmd, EmptyReply)
        await call(kvm, nic_cmd, EmptyReply)
    xml = await kvm.domain_xml(spec.uuid, inactive=True)
    assert xml.count(str(tmp_path / "data.qcow2")) == 1 and xml.count("fa:16:3e:00:00:09") == 1
    for _ in range(2):
        await call(kvm, VolumeDetachCommand(**volume_cmd.model_dump()), EmptyReply)
        await call(kvm, NicDetachCommand(**nic_cmd.model_dump()), EmptyReply)
    xml = await kvm.domain_xml(spec.uuid, inactive=True)
    assert "data.qcow2" not in xml and "fa:16:3e:00:00:09" not in xml
    assert str(tmp_path / "root.qcow2") in xml  # the root disk stays

    missing = VolumeAttachCommand(host_uuid=host, vm_uuid="f" * 32, volume=data)
    with pytest.raises(RingstackError) as err:
        await call(kvm, missing, EmptyReply)
    assert err.value.code == AgentErrors.VM_NOT_FOUND


async def test_migration_and_console_on_the_test_driver_say_clearly_why_not(kvm, tmp_path):
    host = kvm.host_uuid
    spec = vm_spec(str(tmp_path / "root.qcow2"))
    await call(kvm, StartVmCommand(host_uuid=host, vm=spec), VmStateReply)
    migrate = MigrateVmCommand(
        host_uuid=host, vm_uuid=spec.uuid, destination_host_uuid="d" * 32, destination_uri="test:///default"
    )
    with pytest.raises(RingstackError) as err:
        await call(kvm, migrate, VmStateReply)
    assert err.value.code == AgentErrors.HYPERVISOR_ERROR and "migrat" in err.value.message
    assert err.value.details["libvirtCode"] > 0
    with pytest.raises(RingstackError) as err:  # the test driver assigns no VNC port
        await call(kvm, ConsoleCommand(host_uuid=host, vm_uuid=spec.uuid), ConsoleReply)
    assert err.value.code == AgentErrors.HYPERVISOR_ERROR and "VNC" in err.value.message
    gone = MigrateVmCommand(
        host_uuid=host, vm_uuid="e" * 32, destination_host_uuid="d" * 32, destination_uri="test:///default"
    )
    with pytest.raises(RingstackError) as err:  # neither here nor there
        await call(kvm, gone, VmStateReply)
    assert err.value.code == AgentErrors.VM_NOT_FOUND
    assert (await call(kvm, VmSyncCommand(host_uuid=host), VmSyncReply)).vms[0].state == "Running"


class _ImageServer(http.server.SimpleHTTPRequestHandler):
    requests: list[str] = []

    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):
        type(self).requests.append(self.path)
        super().do_GET()


async def test_volumes_overlay_an_image_fetched_once_per_host(kvm, tmp_path):
    image = make_image(tmp_path / "backup" / "image.qcow2", "32M")
    handler = type("Handler", (_ImageServer,), {"requests": []})
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), lambda *a: handler(*a, directory=str(image.parent))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/image.qcow2"
    ps = tmp_path / "ps"
    try:
        first = ps_command(kvm, ps, image_uuid="c" * 32, image_url=url, size=GiB)
        replies = [await call(kvm, first, VolumeReply) for _ in range(2)]  # idempotent: same volume
        second = await call(kvm, ps_command(kvm, ps, image_uuid="c" * 32, image_url=url), VolumeReply)
    finally:
        server.shutdown()
    assert handler.requests == ["/image.qcow2"]  # the image came over once, for two volumes
    assert [r.changed for r in replies] == [True, False]
    assert replies[0].install_path == replies[1].install_path != second.install_path
    info = json.loads(sh("qemu-img", "info", "--output=json", replies[0].install_path).stdout)
    assert info["format"] == "qcow2" and info["virtual-size"] == GiB
    assert info["backing-filename"] == str(ps / "imagecache" / ("c" * 32))

    data = await call(kvm, ps_command(kvm, ps, size=2 * GiB), VolumeReply)
    info = json.loads(sh("qemu-img", "info", "--output=json", data.install_path).stdout)
    assert info["virtual-size"] == 2 * GiB and "backing-filename" not in info
    for _ in range(2):
        await call(
            kvm, DeleteVolumeCommand(host_uuid=kvm.host_uuid, install_path=data.install_path), EmptyReply
        )
    assert not await asyncio.to_thread(Path(data.install_path).exists)


@pytest.mark.parametrize(
    ("change", "code", "text"),
    [
        ({"primary_storage_url": "relative/dir"}, Sys.INVALID_ARGUMENT, "absolute"),
        ({"image_uuid": "c" * 32, "image_url": "ftp://127.0.0.1/x"}, Sys.INVALID_ARGUMENT, "scheme"),
        (
            {"image_uuid": "c" * 32, "image_url": "file:///nonexistent/image"},
            AgentErrors.HYPERVISOR_ERROR,
            "does not exist",
        ),
        ({"size": 0}, Sys.INVALID_ARGUMENT, "size"),
        (
            {"primary_storage_type": "NFS", "primary_storage_url": "no-export"},
            Sys.INVALID_ARGUMENT,
            "host:/export",
        ),
        (
            {"primary_storage_type": "NFS", "primary_storage_url": "127.0.0.1:/export"},
            AgentErrors.HYPERVISOR_ERROR,
            "mount",
        ),
    ],
)
async def test_bad_volume_requests_get_clear_errors(kvm, tmp_path, change, code, text):
    body = {**ps_command(kvm, tmp_path / "ps").model_dump(by_alias=False), **change}
    with pytest.raises(RingstackError) as err:
        await call(kvm, CreateVolumeCommand.model_validate(body), VolumeReply)
    assert err.value.code == code and text in err.value.message
    assert (await call(kvm, PingCommand(host_uuid=kvm.host_uuid), PingReply)).host_uuid == kvm.host_uuid


async def test_only_ringstack_volumes_can_be_deleted(kvm, tmp_path):
    victim = tmp_path / "precious.qcow2"
    victim.write_text("keep me")
    for path in (str(victim), "/etc/passwd", "relative.qcow2"):
        with pytest.raises(RingstackError) as err:
            await call(kvm, DeleteVolumeCommand(host_uuid=kvm.host_uuid, install_path=path), EmptyReply)
        assert err.value.code == Sys.INVALID_ARGUMENT
    assert victim.read_text() == "keep me"


async def test_novlan_bridge_is_real_idempotent_keeps_the_host_online_and_goes_when_unused(kvm, hostnet):
    host, ns = kvm.host_uuid, hostnet.host
    flat = l2("br_flat")
    for _ in range(2):
        reply = await call(kvm, EnsureBridgeCommand(host_uuid=host, l2=flat), BridgeReply)
        assert reply.bridge_name == "br_flat"
    # eth0 is the bridge's port and its address moved to the bridge: the host still reaches its
    # network, and so does a "VM" NIC on the bridge.
    assert ns.master("eth0") == "br_flat"
    assert ns.addresses("br_flat") == [HostNetwork.HOST_IP] and ns.addresses("eth0") == []
    assert hostnet.pings(ns, HostNetwork.OUTSIDE_IP)
    guest = hostnet.vm_port("br_flat", "169.254.10.3/24")
    assert hostnet.pings(guest, HostNetwork.OUTSIDE_IP)

    with pytest.raises(RingstackError) as err:  # a VM's NIC is on it: kept
        await call(kvm, DeleteBridgeCommand(host_uuid=host, l2=flat), EmptyReply)
    assert err.value.code == Sys.RESOURCE_IN_USE and ns.has_link("br_flat")
    ns.ip("link", "del", f"vm{guest.name[-6:]}")
    for _ in range(2):
        await call(kvm, DeleteBridgeCommand(host_uuid=host, l2=flat), EmptyReply)
    assert not ns.has_link("br_flat") and ns.master("eth0") is None
    assert ns.addresses("eth0") == [HostNetwork.HOST_IP] and hostnet.pings(ns, HostNetwork.OUTSIDE_IP)


async def test_vlan_bridge_tags_onto_the_vlan_or_says_the_kernel_cannot(kvm, hostnet):
    # This machine's kernel may lack 802.1Q (no modules to load): then the agent must say so and
    # leave nothing behind; tests/unit/test_kvm_network.py checks the VLAN steps themselves.
    host, ns = kvm.host_uuid, hostnet.host
    tagged = l2("br_v100", vlan=HostNetwork.VLAN)
    if not kernel_has_vlan():
        with pytest.raises(RingstackError) as err:
            await call(kvm, EnsureBridgeCommand(host_uuid=host, l2=tagged), BridgeReply)
        assert err.value.code == AgentErrors.HYPERVISOR_ERROR and "802.1Q" in err.value.message
        assert not ns.has_link("br_v100") and not ns.has_link("eth0.100")
        return
    for _ in range(2):
        await call(kvm, EnsureBridgeCommand(host_uuid=host, l2=tagged), BridgeReply)
    assert ns.master("eth0.100") == "br_v100" and ns.master("eth0") is None
    guest = hostnet.vm_port("br_v100", "169.254.100.3/24")
    assert hostnet.pings(guest, HostNetwork.VLAN_OUTSIDE_IP)
    ns.ip("link", "del", f"vm{guest.name[-6:]}")
    for _ in range(2):
        await call(kvm, DeleteBridgeCommand(host_uuid=host, l2=tagged), EmptyReply)
    assert not ns.has_link("br_v100") and not ns.has_link("eth0.100")


@pytest.mark.parametrize(
    ("network", "code"),
    [
        (l2("br_x", physical="eth9"), AgentErrors.HYPERVISOR_ERROR),  # no such interface
        (l2("br_name_far_too_long"), Sys.INVALID_ARGUMENT),
        (l2("lo"), AgentErrors.HYPERVISOR_ERROR),  # exists and is not a bridge
    ],
)
async def test_bad_bridges_get_clear_errors(kvm, network, code):
    with pytest.raises(RingstackError) as err:
        await call(kvm, EnsureBridgeCommand(host_uuid=kvm.host_uuid, l2=network), BridgeReply)
    assert err.value.code == code


@pytest.mark.parametrize(
    ("name", "body", "code", "text"),
    [
        # valid for the protocol, refused by libvirt: a multicast MAC, two disks on one device
        ("agent.vm.start", "MULTICAST", AgentErrors.HYPERVISOR_ERROR, "unicast"),
        ("agent.vm.start", "SAME_DEVICE", AgentErrors.HYPERVISOR_ERROR, "vda"),
    ],
)
async def test_libvirt_refusals_get_clear_errors_and_the_agent_stays_up(kvm, name, body, code, text):
    """(The protocol-level bad input, the same for every agent: test_agent_conformance.)"""
    host = kvm.host_uuid
    if body == "MULTICAST":
        spec = vm_spec(nics=[nic("01:00:5e:00:00:01")])
    else:
        spec = vm_spec()
        spec.data_volumes.append(volume("/ps/volumes/other.qcow2", device_id=0, kind="Data"))
    with pytest.raises(RingstackError) as err:
        await call(kvm, StartVmCommand(host_uuid=host, vm=spec), VmStateReply)
    assert err.value.code == code and text in err.value.message
    assert "Traceback" not in err.value.message
    assert (await call(kvm, PingCommand(host_uuid=host), PingReply)).host_uuid == host


async def test_state_changes_from_inside_and_behind_our_back_are_reported(kvm, client):
    got: asyncio.Queue[Envelope] = asyncio.Queue()

    async def on_report(env: Envelope):
        got.put_nowait(env)

    await client.start_consumer(
        client.consume(
            client.topology.event_queue("kvm-reports", f"agent.{kvm.host_uuid}.vm_state"), on_report
        )
    )
    host = kvm.host_uuid
    spec = vm_spec()
    await call(kvm, StartVmCommand(host_uuid=host, vm=spec), VmStateReply)
    # The agent's own stop and start are replied, not reported ...
    await call(kvm, StopVmCommand(host_uuid=host, vm_uuid=spec.uuid), VmStateReply)
    await call(kvm, StartVmCommand(host_uuid=host, vm=spec), VmStateReply)

    # ... a shutdown the guest does itself is (the test driver's shutdown is that event) ...
    await kvm.agent.hypervisor.call(lambda c: c.lookupByUUIDString(spec.uuid).shutdown(), "guest shutdown")
    report = await asyncio.wait_for(got.get(), 10)
    assert report.name == "agent.report.vm_state"
    assert report.body == {
        "hostUuid": host,
        "vmUuid": spec.uuid,
        "state": "Stopped",
        "reason": "shut down from inside the guest",
    }
    # ... and so is a VM started and undefined by hand (virsh) behind the agent's back.
    await kvm.agent.hypervisor.call(lambda c: c.lookupByUUIDString(spec.uuid).create(), "virsh start")
    assert (await asyncio.wait_for(got.get(), 10)).body["state"] == "Running"
    await kvm.agent.hypervisor.call(lambda c: c.lookupByUUIDString(spec.uuid).destroy(), "virsh destroy")
    assert (await asyncio.wait_for(got.get(), 10)).body["reason"] == "powered off outside ringstack"
    await kvm.agent.hypervisor.call(lambda c: c.lookupByUUIDString(spec.uuid).undefine(), "virsh undefine")
    assert (await asyncio.wait_for(got.get(), 10)).body["state"] == "Absent"
    assert got.empty()
    assert [r.state for r in kvm.reports] == ["Stopped", "Running", "Stopped", "Absent"]
