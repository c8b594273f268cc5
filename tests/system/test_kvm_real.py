"""The proof that VMs are real: the KVM agent on a real libvirtd runs a real TCG guest (QEMU,
domain type qemu: this machine's KVM is nested without vmx/svm) through its whole life, on the
broker, and reports what the guest does by itself.

The guest (tests/system/guest.py) is Debian's kernel and a busybox initramfs that powers off on the
ACPI power button and on a ``poweroff`` line on its serial console. libvirtd is started in a
network namespace of its own when none runs, so the guest's tap and bridge stay in there.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid as uuidlib
import xml.etree.ElementTree as ET
from pathlib import Path

import libvirt
import pytest

from agents.kvm.config import AgentConfig
from bus.envelope import Envelope
from schema.agent import (
    ConsoleCommand,
    ConsoleReply,
    CreateVolumeCommand,
    DeleteBridgeCommand,
    DeleteVolumeCommand,
    DestroyVmCommand,
    EmptyReply,
    HypervisorAgent,
    RebootVmCommand,
    StartVmCommand,
    StopVmCommand,
    VmStateReply,
    VmSyncCommand,
    VmSyncReply,
    VolumeAttachCommand,
    VolumeReply,
    VolumeSpec,
)
from tests.support.cluster import until
from tests.system.kvmsupport import (
    GiB,
    InProcessAgent,
    MiB,
    delete_agent_queues,
    l2,
    nic,
    sh,
    vm_spec,
)

BOOT_TIMEOUT = 120  # a TCG boot takes a few seconds; a loaded CI machine may take many more


@pytest.fixture
def workdir():
    # /var/tmp, not pytest's 0700 tmp: libvirt's qemu user must reach the volumes.
    path = Path(f"/var/tmp/rs-real-{uuidlib.uuid4().hex[:8]}")
    path.mkdir(mode=0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def uplink(libvirtd):
    """The "physical" interface of the guest's L2 network: a veth in libvirtd's namespace."""
    name = f"rsp{uuidlib.uuid4().hex[:6]}"
    prefix = ["ip", "-n", libvirtd.netns] if libvirtd.netns else ["ip"]
    sh(*prefix, "link", "add", name, "type", "veth", "peer", "name", f"{name}x")
    try:
        yield name
    finally:
        sh(*prefix, "link", "del", name, check=False)


@pytest.fixture
async def real(libvirtd, workdir, client, broker_url, namespace):
    config = AgentConfig(
        host_uuid=uuidlib.uuid4().hex,
        broker_url=broker_url,
        namespace=namespace,
        libvirt_uri="qemu:///system",
        domain_type="qemu",
        console_log_dir=str(workdir / "console"),
        netns=libvirtd.netns,
        stop_timeout=60,
    )
    agent = await InProcessAgent.start(config, client)
    try:
        yield agent
    finally:
        for vm in (await agent.client.call(VmSyncCommand(host_uuid=agent.host_uuid), VmSyncReply)).vms:
            await agent.client.call(
                DestroyVmCommand(host_uuid=agent.host_uuid, vm_uuid=vm.uuid), VmStateReply
            )
        await agent.close()
        delete_agent_queues(namespace, config.host_uuid)


def libvirt_state(vm_uuid: str) -> tuple[int, int]:
    """What libvirt itself says, on a connection of the test's own (not the agent's)."""
    conn = libvirt.open("qemu:///system")
    try:
        dom = conn.lookupByUUIDString(vm_uuid)
        return dom.state()[0], dom.ID()
    finally:
        conn.close()


def console(workdir: Path, vm_uuid: str) -> str:
    try:
        return (workdir / "console" / f"{vm_uuid}.log").read_text(errors="replace")
    except FileNotFoundError:
        return ""


async def booted(workdir: Path, vm_uuid: str) -> None:
    # The log starts afresh at every start of the guest (append='off').
    await until(
        lambda: "RINGSTACK-GUEST-READY acpi=1" in console(workdir, vm_uuid),
        BOOT_TIMEOUT,
        f"the guest to boot; its console so far:\n{console(workdir, vm_uuid)[-2000:]}",
    )


async def test_a_real_guest_runs_stops_by_acpi_reboots_and_reports_its_own_shutdown(
    real, guest, workdir, client, uplink, libvirtd
):
    host = real.host_uuid
    reports: asyncio.Queue[Envelope] = asyncio.Queue()

    async def on_report(env: Envelope):
        reports.put_nowait(env)

    await client.start_consumer(
        client.consume(client.topology.event_queue("real-reports", f"agent.{host}.vm_state"), on_report)
    )
    ps = CreateVolumeCommand(
        host_uuid=host,
        volume_uuid=uuidlib.uuid4().hex,
        primary_storage_uuid="e" * 32,
        primary_storage_url=str(workdir / "ps"),
        primary_storage_type="LocalStorage",
        size=GiB,
        image_uuid="f" * 32,
        image_url=f"file://{guest.image}",
    )
    root = await real.client.call(ps, VolumeReply)
    network = l2(f"rsb{uplink[-6:]}", physical=uplink)
    spec = vm_spec(
        root.install_path,
        nics=[nic("fa:16:3e:12:34:56", network=network)],
        memory_size=128 * MiB,
        kernel=str(guest.kernel),
        initrd=str(guest.initrd),
        kernel_args=guest.kernel_args,
    )
    call = real.client.call

    # start: libvirt runs it under QEMU/TCG, its NIC is a tap on the L2's bridge, it boots
    assert (await call(StartVmCommand(host_uuid=host, vm=spec), VmStateReply)).state == "Running"
    state, first_id = libvirt_state(spec.uuid)
    assert state == libvirt.VIR_DOMAIN_RUNNING
    live = ET.fromstring(await real.domain_xml(spec.uuid))
    assert live.get("type") == "qemu"
    tap = live.find("devices/interface/target").get("dev")
    prefix = ["ip", "-n", libvirtd.netns] if libvirtd.netns else ["ip"]
    assert f"master {network.bridge_name}" in sh(*prefix, "link", "show", tap).stdout
    await booted(workdir, spec.uuid)
    port = (await call(ConsoleCommand(host_uuid=host, vm_uuid=spec.uuid), ConsoleReply)).port
    assert port >= 5900

    # a data volume hot-plugged into the running guest, then out again
    data_ps = ps.model_copy(
        update={"volume_uuid": uuidlib.uuid4().hex, "image_uuid": None, "image_url": None}
    )
    data = await call(data_ps, VolumeReply)
    volume = VolumeSpec(
        uuid=data_ps.volume_uuid, install_path=data.install_path, size=GiB, device_id=1, type="Data"
    )
    queue = real.bus.topology.agent_queue(host).name
    plug = VolumeAttachCommand(
        host_uuid=host, vm_uuid=spec.uuid, volume=volume, protocol_version=HypervisorAgent.VERSION
    ).to_wire()
    await client.call(queue, "agent.vm.attach_volume", plug, timeout=60)
    assert data.install_path in await real.domain_xml(spec.uuid)
    await client.call(queue, "agent.vm.detach_volume", plug, timeout=60)

    async def unplugged() -> bool:
        return data.install_path not in await real.domain_xml(spec.uuid)

    deadline = asyncio.get_running_loop().time() + 60
    while not await unplugged():
        assert asyncio.get_running_loop().time() < deadline, "the guest never released the hot-plugged disk"
        await asyncio.sleep(0.2)
    await call(DeleteVolumeCommand(host_uuid=host, install_path=data.install_path), EmptyReply)

    # a graceful stop is the ACPI power button, and the guest obeys it
    stop = StopVmCommand(host_uuid=host, vm_uuid=spec.uuid, timeout=60)
    assert (await call(stop, VmStateReply)).state == "Stopped"
    assert "RINGSTACK-GUEST-POWEROFF acpi" in console(workdir, spec.uuid)
    assert libvirt_state(spec.uuid)[0] == libvirt.VIR_DOMAIN_SHUTOFF

    # started again, then rebooted: a new QEMU process each time, booting again
    assert (await call(StartVmCommand(host_uuid=host, vm=spec), VmStateReply)).state == "Running"
    await booted(workdir, spec.uuid)
    _, second_id = libvirt_state(spec.uuid)
    assert (await call(RebootVmCommand(host_uuid=host, vm_uuid=spec.uuid), VmStateReply)).state == "Running"
    state, third_id = libvirt_state(spec.uuid)
    assert state == libvirt.VIR_DOMAIN_RUNNING and first_id < second_id < third_id
    await booted(workdir, spec.uuid)

    # the guest shuts itself down (a line on its serial console): reported, and sync agrees
    assert reports.empty()  # everything so far was the agent's own doing, answered in replies
    pty = ET.fromstring(await real.domain_xml(spec.uuid)).find("devices/serial/source").get("path")
    # Held open until the guest is gone: QEMU reads its pty only while someone is connected.
    fd = os.open(pty, os.O_RDWR | os.O_NOCTTY)
    try:
        os.write(fd, b"poweroff\n")
        report = await asyncio.wait_for(reports.get(), BOOT_TIMEOUT)
    finally:
        os.close(fd)
    assert report.body == {
        "hostUuid": host,
        "vmUuid": spec.uuid,
        "state": "Stopped",
        "reason": "shut down from inside the guest",
    }
    assert "RINGSTACK-GUEST-POWEROFF console" in console(workdir, spec.uuid)
    synced = await call(VmSyncCommand(host_uuid=host), VmSyncReply)
    assert [(v.uuid, v.state) for v in synced.vms] == [(spec.uuid, "Stopped")]

    # destroyed: gone from libvirt; its bridge is unused and goes too
    assert (await call(DestroyVmCommand(host_uuid=host, vm_uuid=spec.uuid), VmStateReply)).state == "Absent"
    with pytest.raises(libvirt.libvirtError):
        libvirt_state(spec.uuid)
    await call(DeleteBridgeCommand(host_uuid=host, l2=network), EmptyReply)
    assert sh(*prefix, "link", "show", network.bridge_name, check=False).returncode != 0
