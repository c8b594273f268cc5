"""MigrateVm end to end, through the public API only: two KVM hosts added with AddKVMHost (the agent
deployed over SSH by the Ansible playbook), a real guest created on one, live-migrated to the other
by libvirt, and back by the scheduler.

Each host is a ``MigrationLab`` host (kvmsupport): a network namespace on a LAN with a libvirtd of
its own (own host UUID, sockets, state and definitions in a private mount namespace, listening on
TCP where its peer's libvirtd migrates to), plus an sshd in the same network and mount namespaces
(``SshLibvirtHost``), so the agent the playbook starts there talks to that host's libvirtd at
``qemu:///system`` and makes the L2's bridge in that host's network. Both hosts see the rest of the
machine's filesystem at the same paths: a directory there is what an operator's cluster
filesystem is, added as a SharedMountPoint primary storage. The agents are not told the directory
is shared (no ``migration_shared_paths``): the management node says so in the MigrateVm command,
because every volume of the VM is on shared storage.

The guest boots by itself from its root volume (``guest.disk``: BIOS, SYSLINUX, Debian's kernel, a
busybox initramfs). Proof that it lives on after a move: a line written to its serial console on
the new host comes back echoed by its kernel, and it did not boot again.
"""

from __future__ import annotations

import asyncio
import shutil
import time
import urllib.parse
import uuid as uuidlib
from pathlib import Path

import libvirt
import pytest

from mgmt.config import NodeConfig
from mgmt.core.brokeradmin import BrokerAdmin, agent_username
from mgmt.node import ManagementNode
from tests.support import infra
from tests.support.cluster import until
from tests.system.kvmsupport import (
    MigrationLab,
    SshLibvirtHost,
    TcpRelay,
    console,
    delete_agent_queues,
    echoes,
)

BUNDLES = Path("/var/tmp/ringstack-test-bundles")  # the agent bundle cache the other system tests use
GiB = 1 << 30
MiB = 1 << 20
DEPLOY_TIMEOUT = 600  # a first deployment installs the agent (about a minute on an idle 2-core machine)
VM_TIMEOUT = 180
BOOT_TIMEOUT = 120
UPLINK = "rsup0"  # the guest L2's "physical" interface, the same name on both hosts


@pytest.fixture(scope="module", autouse=True)
def quiet_libvirt():
    """libvirt prints every error to stderr besides raising it; lookups here expect some domains to
    be gone, so the exceptions are read and the printing silenced."""
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    yield
    libvirt.registerErrorHandler(None, None)


@pytest.fixture(scope="module")
def lab():
    """Two hosts, each with its own libvirtd and its own sshd; the broker relayed onto their LAN."""
    # /var/tmp, not pytest's 0700 tmp: libvirt's qemu user must reach the volumes.
    base = Path(f"/var/tmp/rs-migapi-{uuidlib.uuid4().hex[:8]}")
    base.mkdir()
    base.chmod(0o755)
    try:
        lab = MigrationLab(base)
    except BaseException:
        shutil.rmtree(base, ignore_errors=True)
        raise
    relay = None
    try:
        agent_root = base / "agent"  # the same path on both hosts, each with its own files there
        for host in lab.hosts:
            host.add_uplink(UPLINK)
            SshLibvirtHost(host, agent_root).start_sshd()
        broker = urllib.parse.urlsplit(infra.BROKER_URL)
        lan_side = lab.hosts[0].address.rsplit(".", 1)[0] + ".254"  # the root namespace on the LAN
        relay = TcpRelay(
            (lan_side, broker.port or 5672), (broker.hostname or "127.0.0.1", broker.port or 5672)
        )
        lab.relay_url = f"amqp://{lan_side}:{broker.port or 5672}/"  # type: ignore[attr-defined]
        lab.agent_root = agent_root  # type: ignore[attr-defined]
        yield lab
    finally:
        if relay is not None:
            relay.close()
        lab.close()


@pytest.fixture
def host_uuids(namespace):
    """The hosts' uuids: their broker users and agent queues go at the end whatever happened."""
    uuids = [uuidlib.uuid4().hex, uuidlib.uuid4().hex]
    yield uuids
    for host in uuids:
        BrokerAdmin().delete_agent_user(namespace, host)
    delete_agent_queues(namespace, *uuids)


@pytest.fixture
async def kvm_node(node_config, lab):
    """The test's management node, deploying agents onto the lab's hosts: the broker as they reach
    it, TCG guests, their libvirtd (``qemu:///system`` in each host's own mount namespace), and the
    playbook told to leave libvirtd's configuration alone (the lab's daemons already listen on TCP;
    the machine's /etc/libvirt is not the test's to edit)."""
    config = NodeConfig(
        **{
            **node_config.model_dump(),
            "agent_broker_url": lab.relay_url,
            "kvm_domain_type": "qemu",
            "agent_bundle_dir": str(BUNDLES),
            "kvm_ssh_timeout": 5,
            "kvm_agent_settings": {
                "libvirt_uri": "qemu:///system",
                "console_log_dir": str(lab.base / "console"),
                "stop_timeout": 60,
            },
            "kvm_playbook_vars": {"agent_root": str(lab.agent_root), "libvirt_listen_tcp": False},
        }
    )
    node = ManagementNode(config)
    await node.start()
    try:
        yield node
    finally:
        await node.stop()


async def test_a_guest_migrates_between_two_kvm_hosts_through_the_api(
    kvm_node, client, lab, guest, host_uuids
):
    api = client.api
    one, two = lab.hosts
    uuid_a, uuid_b = host_uuids

    async def query(kind: str, uuid: str) -> dict:
        found = await api(f"Query{kind}", {"conditions": [{"name": "uuid", "op": "=", "value": uuid}]})
        (row,) = found["inventories"]
        return row

    zone = (await api("CreateZone", {"name": "zone"}))["inventory"]["uuid"]
    cluster = (await api("CreateCluster", {"zoneUuid": zone, "name": "kvm", "hypervisorType": "KVM"}))[
        "inventory"
    ]["uuid"]

    # Both hosts, by address and SSH key, deployed at once (the playbook really runs over SSH).
    started = time.monotonic()
    added = await asyncio.gather(
        *(
            api(
                "AddKVMHost",
                {
                    "clusterUuid": cluster,
                    "name": f"kvm-{i + 1}",
                    "managementIp": host.address,
                    "sshKey": (host.root / "ssh/client_key").read_text(),
                    "resourceUuid": uuid,
                },
                timeout=DEPLOY_TIMEOUT,
            )
            for i, (host, uuid) in enumerate(zip(lab.hosts, host_uuids, strict=True))
        )
    )
    print(f"AddKVMHost x2: {time.monotonic() - started:.1f} s")
    assert [h["inventory"]["status"] for h in added] == ["Connected", "Connected"]
    total_cpu, total_memory = added[0]["inventory"]["totalCpu"], added[0]["inventory"]["totalMemorySize"]
    for host in lab.hosts:  # each agent runs inside its host, from that host's own install
        pid = int((host.root / "agent/run/agent.pid").read_text())
        assert pid in host.ns.pids()

    # shared storage: one directory, the same path on both hosts
    ps_dir, bs_dir = lab.base / "ps", lab.base / "bs"
    ps_dir.mkdir(mode=0o755)
    bs_dir.mkdir(mode=0o755)
    ps = (
        await api(
            "AddSharedMountPointPrimaryStorage",
            {"zoneUuid": zone, "name": "smp", "url": str(ps_dir), "totalCapacity": 100 * GiB},
        )
    )["inventory"]
    assert ps["type"] == "SharedMountPoint"
    await api("AttachPrimaryStorageToCluster", {"primaryStorageUuid": ps["uuid"], "clusterUuid": cluster})
    bs = (await api("AddLocalDirBackupStorage", {"name": "bs", "url": str(bs_dir)}))["inventory"]["uuid"]
    await api("AttachBackupStorageToZone", {"backupStorageUuid": bs, "zoneUuid": zone})
    image = (
        await api(
            "AddImage",
            {"name": "guest", "url": f"file://{guest.disk}", "format": "raw", "backupStorageUuids": [bs]},
            timeout=120,
        )
    )["inventory"]["uuid"]
    offering = (await api("CreateInstanceOffering", {"name": "tiny", "cpuNum": 1, "memorySize": 128 * MiB}))[
        "inventory"
    ]["uuid"]
    l2 = (await api("CreateL2NoVlanNetwork", {"zoneUuid": zone, "name": "l2", "physicalInterface": UPLINK}))[
        "inventory"
    ]["uuid"]
    await api("AttachL2NetworkToCluster", {"l2NetworkUuid": l2, "clusterUuid": cluster})
    l3 = (await api("CreateL3Network", {"l2NetworkUuid": l2, "name": "l3"}))["inventory"]["uuid"]
    await api("AddIpRangeByNetworkCidr", {"l3NetworkUuid": l3, "name": "r", "networkCidr": "10.20.0.0/24"})

    # CreateVmInstance on host A
    vm_uuid = uuidlib.uuid4().hex
    request = {
        "name": "vm-1",
        "instanceOfferingUuid": offering,
        "imageUuid": image,
        "l3NetworkUuids": [l3],
        "hostUuid": uuid_a,
        "resourceUuid": vm_uuid,
    }
    vm = (await api("CreateVmInstance", request, timeout=VM_TIMEOUT))["inventory"]
    assert (vm["state"], vm["hostUuid"]) == ("Running", uuid_a)
    (root,) = vm["allVolumes"]
    assert root["installPath"].startswith(f"{ps_dir}/volumes/")
    assert one.domain_state(vm_uuid) == (libvirt.VIR_DOMAIN_RUNNING, True)
    assert two.domain_state(vm_uuid) is None
    bridge = f"br_{UPLINK}"[:10]
    assert one.ns.has_link(bridge) and not two.ns.has_link(bridge)
    await until(
        lambda: "RINGSTACK-GUEST-READY acpi=1" in console(lab, vm_uuid),
        BOOT_TIMEOUT,
        "the guest to boot",
    )
    assert (await query("Host", uuid_a))["availableCpu"] == total_cpu - 1

    # B is a candidate (same cluster, shared storage, room)
    candidates = await api("GetVmMigrationCandidateHosts", {"vmInstanceUuid": vm_uuid})
    assert [h["uuid"] for h in candidates["inventories"]] == [uuid_b]

    # MigrateVm to B: the bridge made there first, then libvirt moves the running guest live
    started = time.monotonic()
    moved = (await api("MigrateVm", {"vmInstanceUuid": vm_uuid, "hostUuid": uuid_b}, timeout=VM_TIMEOUT))[
        "inventory"
    ]
    print(f"MigrateVm A -> B: {time.monotonic() - started:.1f} s")
    assert (moved["state"], moved["hostUuid"]) == ("Running", uuid_b)
    assert two.domain_state(vm_uuid) == (libvirt.VIR_DOMAIN_RUNNING, True)
    assert one.domain_state(vm_uuid) is None
    assert two.ns.has_link(bridge)
    a, b = await query("Host", uuid_a), await query("Host", uuid_b)
    assert (a["availableCpu"], a["availableMemorySize"]) == (total_cpu, total_memory)
    assert (b["availableCpu"], b["availableMemorySize"]) == (total_cpu - 1, total_memory - 128 * MiB)
    await echoes(lab, two, vm_uuid)
    assert "RINGSTACK-GUEST-READY" not in console(lab, vm_uuid)  # the same guest: it did not boot again

    # MigrateVm without a host: the scheduler picks the only other host, A
    back = (await api("MigrateVm", {"vmInstanceUuid": vm_uuid}, timeout=VM_TIMEOUT))["inventory"]
    assert (back["state"], back["hostUuid"]) == ("Running", uuid_a)
    assert one.domain_state(vm_uuid) == (libvirt.VIR_DOMAIN_RUNNING, True)
    assert two.domain_state(vm_uuid) is None
    await echoes(lab, one, vm_uuid)
    assert "RINGSTACK-GUEST-READY" not in console(lab, vm_uuid)
    a, b = await query("Host", uuid_a), await query("Host", uuid_b)
    assert (a["availableCpu"], b["availableCpu"]) == (total_cpu - 1, total_cpu)

    # Destroy and expunge: gone from libvirt on both hosts, its volume gone from the shared storage
    destroyed = (await api("DestroyVmInstance", {"uuid": vm_uuid}, timeout=VM_TIMEOUT))["inventory"]
    assert destroyed["state"] == "Destroyed"
    assert one.domain_state(vm_uuid) is None and two.domain_state(vm_uuid) is None
    assert await api("ExpungeVmInstance", {"uuid": vm_uuid}, timeout=VM_TIMEOUT) == {}
    assert not await asyncio.to_thread(Path(root["installPath"]).exists)
    assert (await query("Host", uuid_a))["availableCpu"] == total_cpu
    assert (await query("PrimaryStorage", ps["uuid"]))["availableCapacity"] == 100 * GiB

    for uuid in host_uuids:
        await api("DeleteHost", {"uuid": uuid})
        assert agent_username(client.topology.namespace, uuid) not in BrokerAdmin().users()
