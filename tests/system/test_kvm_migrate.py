"""Live migration for real: a running TCG guest moves between two hosts' libvirtds through the KVM
agent's protocol, and keeps running.

Two hosts on one machine (``MigrationLab`` in kvmsupport): each is a network namespace on a LAN
with a libvirtd of its own (its own host UUID, sockets, state and definitions in a private mount
namespace, a TCP listener its peer migrates to). The rest of the filesystem is the machine's, so
the primary storage directory is shared storage: the same files at the same path on both hosts.
libvirt does not know that it is shared (it recognises NFS and cluster filesystems), which is what
the agent's ``migration_shared_paths`` tells it; without it libvirt refuses, as shown here.

The guest (tests/system/guest.py) is Debian's kernel and a busybox initramfs; its serial console
is logged to a file. Proof that it is alive after a move: a line written to its serial console on
the new host comes back echoed by the guest's kernel, and it has not booted again.
"""

from __future__ import annotations

import shutil
import uuid as uuidlib
from pathlib import Path

import libvirt
import pytest

from agents.kvm.config import AgentConfig
from bus.errors import RingstackError
from schema.agent import (
    AgentErrors,
    BridgeReply,
    CreateVolumeCommand,
    DestroyVmCommand,
    EnsureBridgeCommand,
    MigrateVmCommand,
    StartVmCommand,
    VmStateReply,
    VmSyncCommand,
    VmSyncReply,
    VolumeReply,
)
from tests.support.cluster import until
from tests.system.kvmsupport import (
    GiB,
    InProcessAgent,
    LibvirtHost,
    MiB,
    MigrationLab,
    console,
    delete_agent_queues,
    echoes,
    l2,
    nic,
    vm_spec,
)

REPORT_TIMEOUT = 30
BOOT_TIMEOUT = 120  # a TCG boot takes seconds; a loaded CI machine may take many more
UPLINK = "rsup0"  # the guest L2's "physical" interface, the same name on both hosts


def arrived(vm: str) -> tuple[str, str, str]:
    """The report of a destination's agent when a VM has migrated in."""
    return (vm, "Running", "resumed after migration")


@pytest.fixture(scope="module")
def lab():
    # /var/tmp, not pytest's 0700 tmp: libvirt's qemu user must reach the volumes.
    base = Path(f"/var/tmp/rs-mig-{uuidlib.uuid4().hex[:8]}")
    base.mkdir()
    base.chmod(0o755)
    try:
        lab = MigrationLab(base)
    except BaseException:
        shutil.rmtree(base, ignore_errors=True)
        raise
    try:
        for host in lab.hosts:
            host.add_uplink(UPLINK)
        yield lab
    finally:
        lab.close()


class Hosts:
    """The agents of the lab's hosts, started and restarted here, stopped and cleaned at the end."""

    def __init__(self, lab: MigrationLab, client, broker_url: str, namespace: str) -> None:
        self.lab, self.client, self.broker_url, self.namespace = lab, client, broker_url, namespace
        self.uuids = [uuidlib.uuid4().hex for _ in lab.hosts]
        self.agents: dict[int, InProcessAgent] = {}

    def config(self, i: int, shared: list[str]) -> AgentConfig:
        host = self.lab.hosts[i]
        return AgentConfig(
            host_uuid=self.uuids[i],
            broker_url=self.broker_url,
            namespace=self.namespace,
            libvirt_uri=host.uri,
            domain_type="qemu",
            console_log_dir=str(self.lab.base / "console"),
            netns=host.ns.name,
            migration_shared_paths=shared,
        )

    async def start(self, i: int, shared: list[str]) -> InProcessAgent:
        if i in self.agents:
            await self.agents.pop(i).close()
        self.agents[i] = await InProcessAgent.start(self.config(i, shared), self.client)
        return self.agents[i]

    async def close(self) -> None:
        try:
            for agent in self.agents.values():
                try:
                    synced = await agent.client.call(VmSyncCommand(host_uuid=agent.host_uuid), VmSyncReply)
                    for vm in synced.vms:
                        await agent.client.call(
                            DestroyVmCommand(host_uuid=agent.host_uuid, vm_uuid=vm.uuid), VmStateReply
                        )
                finally:
                    await agent.close()
        finally:
            delete_agent_queues(self.namespace, *self.uuids)


@pytest.fixture
async def hosts(lab, client, broker_url, namespace):
    hosts = Hosts(lab, client, broker_url, namespace)
    try:
        yield hosts
    finally:
        await hosts.close()


async def test_a_running_guest_migrates_live_to_another_host_and_back(lab, guest, hosts):
    one, two = lab.hosts
    shared = lab.base / "ps"  # both hosts see these files at this path: shared primary storage
    a = await hosts.start(0, shared=[str(shared)])
    b = await hosts.start(1, shared=[])  # not told: libvirt judges its storage
    host_a, host_b = a.host_uuid, b.host_uuid

    root = await a.client.call(
        CreateVolumeCommand(
            host_uuid=host_a,
            volume_uuid=uuidlib.uuid4().hex,
            primary_storage_uuid="e" * 32,
            primary_storage_url=str(shared),
            primary_storage_type="LocalStorage",
            size=GiB,
            image_uuid="f" * 32,
            image_url=f"file://{guest.image}",
        ),
        VolumeReply,
    )
    network = l2(f"rsb{uuidlib.uuid4().hex[:6]}", physical=UPLINK)
    spec = vm_spec(
        root.install_path,
        nics=[nic("fa:16:3e:12:34:57", network=network)],
        memory_size=128 * MiB,
        kernel=str(guest.kernel),
        initrd=str(guest.initrd),
        kernel_args=guest.kernel_args,
    )
    vm = spec.uuid

    def to(agent: InProcessAgent, destination: LibvirtHost, dest_uuid: str) -> MigrateVmCommand:
        return MigrateVmCommand(
            host_uuid=agent.host_uuid,
            vm_uuid=vm,
            destination_host_uuid=dest_uuid,
            destination_uri=destination.tcp_uri,
        )

    assert (await a.client.call(StartVmCommand(host_uuid=host_a, vm=spec), VmStateReply)).state == "Running"
    await until(lambda: "RINGSTACK-GUEST-READY" in console(lab, vm), BOOT_TIMEOUT, "the guest to boot")

    # A destination without the VM's L2 bridge cannot take it: libvirt says so, the VM stays put.
    with pytest.raises(RingstackError) as refused:
        await a.client.call(to(a, two, host_b), VmStateReply, timeout=120)
    assert refused.value.code == AgentErrors.HYPERVISOR_ERROR
    assert network.bridge_name in refused.value.message, refused.value.message
    assert one.domain_state(vm) == (libvirt.VIR_DOMAIN_RUNNING, True)
    assert two.domain_state(vm) is None

    # The management side prepares the destination, then the source's agent migrates the VM live.
    await b.client.call(EnsureBridgeCommand(host_uuid=host_b, l2=network), BridgeReply)
    assert (await a.client.call(to(a, two, host_b), VmStateReply, timeout=120)).state == "Running"
    assert one.domain_state(vm) is None  # undefined at the source
    assert two.domain_state(vm) == (libvirt.VIR_DOMAIN_RUNNING, True)  # running, persistent
    await echoes(lab, two, vm)
    assert "RINGSTACK-GUEST-READY" not in console(lab, vm)  # the same guest: it did not boot again

    # Reports: the destination's agent reports the VM that arrived, once it runs there; the source's
    # says nothing of a VM it sent away (its reply did), nor did the destination of the failed try.
    await until(lambda: b.reports, REPORT_TIMEOUT, "host two's agent to report the VM")
    assert [(r.vm_uuid, r.state, r.reason) for r in b.reports] == [arrived(vm)]
    assert a.reports == []

    # Idempotent: the same command again (a lost reply, a resumed job) finds it at the destination.
    assert (await a.client.call(to(a, two, host_b), VmStateReply, timeout=120)).state == "Running"
    assert (await a.client.call(VmSyncCommand(host_uuid=host_a), VmSyncReply)).vms == []
    synced = (await b.client.call(VmSyncCommand(host_uuid=host_b), VmSyncReply)).vms
    assert [(v.uuid, v.state) for v in synced] == [(vm, "Running")]

    # Back: host two's agent was not told its storage is shared, and libvirt will not guess.
    with pytest.raises(RingstackError) as unsafe:
        await b.client.call(to(b, one, host_a), VmStateReply, timeout=120)
    assert unsafe.value.code == AgentErrors.HYPERVISOR_ERROR
    assert "Migration without shared storage is unsafe" in unsafe.value.message
    assert unsafe.value.details["libvirtCode"] == libvirt.VIR_ERR_MIGRATE_UNSAFE
    assert two.domain_state(vm) == (libvirt.VIR_DOMAIN_RUNNING, True)

    b = await hosts.start(1, shared=[str(shared)])  # configured as host one is; restarted
    assert (await b.client.call(to(b, one, host_a), VmStateReply, timeout=120)).state == "Running"
    assert two.domain_state(vm) is None
    assert one.domain_state(vm) == (libvirt.VIR_DOMAIN_RUNNING, True)
    await echoes(lab, one, vm)
    assert "RINGSTACK-GUEST-READY" not in console(lab, vm)
    await until(lambda: a.reports, REPORT_TIMEOUT, "host one's agent to report the VM")
    assert [(r.vm_uuid, r.state, r.reason) for r in a.reports] == [arrived(vm)]
    assert b.reports == []

    assert (
        await a.client.call(DestroyVmCommand(host_uuid=host_a, vm_uuid=vm), VmStateReply)
    ).state == "Absent"
    assert one.domain_state(vm) is None and two.domain_state(vm) is None
