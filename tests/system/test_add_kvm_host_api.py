"""AddKVMHost end to end, through the public API only: an operator gives a host's address and SSH
credentials, the management node deploys the agent there over SSH (paramiko, then the Ansible
playbook), the agent connects with its own broker user and the host is Connected with the capacity
its agent reports; then real guests run on it through the API.

The host is ``FakeKvmHost``: a network namespace with its own sshd (root's password known to that
sshd only) and a relay to the broker on its network. One host serves both tests: the second adds
it again (a fresh database), and the playbook finds the agent's build already installed.

The guests run on a real libvirtd (QEMU, TCG) in a namespace of its own, where the deployed
agent makes its bridges (agent setting ``netns``). The image is ``guest.disk``, a raw disk that
boots by itself (SYSLINUX), added with ``AddImage``: the VM boots from its root volume, a qcow2
overlay the agent made on the image it fetched from backup storage, as any VM does.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
import urllib.parse
import uuid as uuidlib
import xml.etree.ElementTree as ET
from pathlib import Path

import aiormq
import libvirt
import pytest

from bus.errors import RingstackError
from mgmt.config import NodeConfig
from mgmt.core import hostdeploy
from mgmt.core.brokeradmin import BrokerAdmin, agent_username
from mgmt.node import ManagementNode
from tests.support import infra
from tests.support.cluster import until
from tests.system.kvmsupport import FakeKvmHost, delete_agent_queues, deploy_failing_at, sh

BUNDLES = Path("/var/tmp/ringstack-test-bundles")  # the agent bundle cache test_kvm_deploy uses too
ROOT_PASSWORD = "rs-fake-host-Pa55"
GiB = 1 << 30
MiB = 1 << 20
# A first deployment installs the agent (about a minute on an idle 2-core machine); leave room.
DEPLOY_TIMEOUT = 600
VM_TIMEOUT = 180
BOOT_TIMEOUT = 120


# ---------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", autouse=True)
def quiet_libvirt():
    """libvirt prints every error to stderr besides raising it; these tests look domains up
    expecting some to be gone, so they read the exceptions and silence the printing."""
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    yield
    libvirt.registerErrorHandler(None, None)  # libvirt's default again


@pytest.fixture(scope="module")
def fakehost():
    base = Path(f"/var/tmp/rs-fakehost-{uuidlib.uuid4().hex[:8]}")
    base.mkdir(mode=0o755)
    host = FakeKvmHost(base)
    try:
        host.start_sshd(password=ROOT_PASSWORD)
        broker = urllib.parse.urlsplit(infra.BROKER_URL)
        host.start_broker_relay((broker.hostname or "127.0.0.1", broker.port or 5672))
        yield host
    finally:
        host.close()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def hosts(namespace):
    """Host uuids a test adds: their broker users and agent queues go at the end whatever happened
    (DeleteHost does it when the test gets that far)."""
    added: list[str] = []
    yield added
    for host in added:
        BrokerAdmin().delete_agent_user(namespace, host)
    delete_agent_queues(namespace, *added)


@pytest.fixture
async def kvm_node(node_config, fakehost, hosts):
    """Starts the test's management node, configured to deploy agents onto the fake host: the
    broker as the host reaches it, TCG guests, the host's own install directory, a short SSH
    timeout, and the agent settings the test gives."""
    started: list[ManagementNode] = []

    async def start(**agent_settings) -> ManagementNode:
        config = NodeConfig(
            **{
                **node_config.model_dump(),
                "agent_broker_url": fakehost.relay_url,
                "kvm_domain_type": "qemu",
                "agent_bundle_dir": str(BUNDLES),
                "kvm_ssh_timeout": 5,
                "kvm_agent_settings": agent_settings,
                # libvirtd here is the test's: the role must not configure the machine's
                "kvm_playbook_vars": {"agent_root": str(fakehost.agent_root), "libvirt_listen_tcp": False},
            }
        )
        node = ManagementNode(config)
        await node.start()
        started.append(node)
        return node

    yield start
    for node in started:
        await node.stop()


async def kvm_cluster(client) -> tuple[str, str]:
    zone = (await client.api("CreateZone", {"name": "zone"}))["inventory"]["uuid"]
    body = {"zoneUuid": zone, "name": "kvm", "hypervisorType": "KVM"}
    return zone, (await client.api("CreateCluster", body))["inventory"]["uuid"]


async def query_host(client, uuid: str) -> dict:
    found = await client.api("QueryHost", {"conditions": [{"name": "uuid", "op": "=", "value": uuid}]})
    (host,) = found["inventories"]
    return host


def agent_broker_url(fakehost: FakeKvmHost) -> str:
    """The broker URL (with the host's own credentials) the playbook wrote into the agent's config."""
    for line in (fakehost.agent_root / "kvm-agent.toml").read_text().splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "broker_url":
            return value.strip().strip('"')
    raise AssertionError("the agent's config has no broker_url")


async def can_log_in(url: str) -> bool:
    # aiormq, not aio_pika: a refused aio_pika.connect leaves a Connection whose __del__ calls
    # close() without awaiting it (a RuntimeWarning in the test output).
    try:
        connection = await asyncio.wait_for(aiormq.connect(url), 10)
    except aiormq.exceptions.ProbableAuthenticationError:
        return False
    await connection.close()
    return True


def broker_users_connected() -> set[str]:
    out = infra.rabbitmqctl("list_connections", "user", "--no-table-headers", "--quiet")
    return {line.strip() for line in out.splitlines()}


def broker_queues() -> set[str]:
    out = infra.rabbitmqctl("list_queues", "name", "--no-table-headers", "--quiet")
    return {line.strip() for line in out.splitlines()}


# ---------------------------------------------------------------------- (1) deployment


async def test_add_kvm_host_deploys_the_agent_reconnects_without_reinstalling_and_delete_removes_its_broker_user(
    kvm_node, client, fakehost, hosts, namespace, caplog
):
    caplog.set_level(logging.INFO, logger="mgmt")
    # libvirt's test driver is enough to connect; the real libvirtd is the next test's
    await kvm_node(libvirt_uri="test:///default")
    _, cluster = await kvm_cluster(client)
    add = {"clusterUuid": cluster, "name": "kvm-1", "managementIp": fakehost.ip}

    # A wrong password: the deployment stops at its first step; the host stays, Disconnected, and
    # the error and the host both say which step failed and why.
    with pytest.raises(RingstackError) as err:
        await client.api("AddKVMHost", {**add, "password": "not-the-password"}, timeout=60)
    assert err.value.code == "HOST.DEPLOY_FAILED"
    assert err.value.details["step"] == "ssh"
    assert err.value.details["reason"] == f"authentication failed for root@{fakehost.ip}:22"
    bad = await query_host(client, err.value.details["uuid"])
    assert bad["status"] == "Disconnected"
    assert "failed at step ssh: authentication failed" in bad["statusReason"]
    assert fakehost.agent_pid() is None  # nothing was started
    await client.api("DeleteHost", {"uuid": bad["uuid"]})

    # The right password: the agent is installed, started and connected; capacity is its facts.
    host_uuid = uuidlib.uuid4().hex
    hosts.append(host_uuid)
    started = time.monotonic()
    body = {**add, "password": ROOT_PASSWORD, "resourceUuid": host_uuid}
    host = (await client.api("AddKVMHost", body, timeout=DEPLOY_TIMEOUT))["inventory"]
    print(f"AddKVMHost (first install): {time.monotonic() - started:.1f} s")
    conn = libvirt.open("test:///default")
    try:
        _model, memory_mib, cpus, *_ = conn.getInfo()
    finally:
        conn.close()
    assert (host["uuid"], host["status"], host.get("statusReason")) == (host_uuid, "Connected", None)
    assert (host["totalCpu"], host["availableCpu"]) == (cpus, cpus)
    assert (host["totalMemorySize"], host["availableMemorySize"]) == (memory_mib * MiB, memory_mib * MiB)
    assert await query_host(client, host_uuid) == host
    # the agent runs inside the host (its namespace), as the host's own broker user
    pid = fakehost.agent_pid()
    assert pid is not None and pid in fakehost.ns.pids()
    user = agent_username(namespace, host_uuid)
    assert user in broker_users_connected()

    # ReconnectHost deploys again: the installed build matches, so nothing is reinstalled; the
    # agent restarts with a fresh broker password
    installed = fakehost.agent_root / "installed-build"
    stamp = installed.stat().st_mtime_ns
    venv = (fakehost.agent_root / "venv/bin/python").stat().st_ino
    caplog.clear()
    started = time.monotonic()
    again = (await client.api("ReconnectHost", {"uuid": host_uuid}, timeout=DEPLOY_TIMEOUT))["inventory"]
    print(f"ReconnectHost (nothing to install): {time.monotonic() - started:.1f} s")
    assert again["status"] == "Connected" and again["totalCpu"] == cpus
    assert installed.stat().st_mtime_ns == stamp
    assert (fakehost.agent_root / "venv/bin/python").stat().st_ino == venv
    assert fakehost.agent_pid() not in (None, pid)
    deployed = [
        r.getMessage() for r in caplog.records if "KVM agent deployed and connected" in r.getMessage()
    ]
    assert len(deployed) == 1 and host_uuid in deployed[0] and "playbook changed:" in deployed[0]

    # DeleteHost: the host's broker user goes (its credentials no longer log in, its agent's
    # connection is closed) and so does its agent queue
    url = agent_broker_url(fakehost)
    assert await can_log_in(url)
    assert await client.api("DeleteHost", {"uuid": host_uuid}) == {}
    assert user not in BrokerAdmin().users()
    assert not await can_log_in(url)
    await until(lambda: user not in broker_users_connected(), 30, "the agent's connection to close")
    assert client.topology.agent_queue(host_uuid).name not in broker_queues()
    assert (await client.api("QueryHost", {"count": True}))["total"] == 0


async def test_a_failed_add_leaves_a_disconnected_host_and_nothing_else_and_a_failed_reconnect_keeps_the_agent(
    kvm_node, client, fakehost, hosts, namespace, monkeypatch
):
    await kvm_node(libvirt_uri="test:///default")
    _, cluster = await kvm_cluster(client)
    host_uuid = uuidlib.uuid4().hex
    hosts.append(host_uuid)
    user, queue = agent_username(namespace, host_uuid), client.topology.agent_queue(host_uuid).name
    body = {"clusterUuid": cluster, "name": "kvm-1", "managementIp": fakehost.ip, "password": ROOT_PASSWORD}

    # The agent answered, then the deployment failed: the host stays, Disconnected with no
    # capacity, and what the deployment made is gone (broker user, its queue, the running agent).
    monkeypatch.setattr(hostdeploy, "STEPS", deploy_failing_at("connect"))
    with pytest.raises(RingstackError) as err:
        await client.api("AddKVMHost", {**body, "resourceUuid": host_uuid}, timeout=DEPLOY_TIMEOUT)
    assert err.value.code == "HOST.DEPLOY_FAILED"
    assert (err.value.details["step"], err.value.details["reason"]) == ("connect", "injected fault")
    assert err.value.details["rolledBack"] == ["playbook", "credentials"]
    host = await query_host(client, host_uuid)
    assert host["status"] == "Disconnected" and "failed at step connect" in host["statusReason"]
    assert (host["totalCpu"], host["totalMemorySize"]) == (0, 0)
    assert user not in BrokerAdmin().users() and user not in broker_users_connected()
    assert queue not in broker_queues()
    assert fakehost.agent_pid() is None

    # Fixed, the operator reconnects; a later reconnect that fails keeps the host's agent and user.
    monkeypatch.undo()
    assert (await client.api("ReconnectHost", {"uuid": host_uuid}, timeout=DEPLOY_TIMEOUT))["inventory"][
        "status"
    ] == "Connected"
    monkeypatch.setattr(hostdeploy, "STEPS", deploy_failing_at("connect"))
    with pytest.raises(RingstackError) as again:
        await client.api("ReconnectHost", {"uuid": host_uuid}, timeout=DEPLOY_TIMEOUT)
    monkeypatch.undo()
    assert again.value.code == "HOST.DEPLOY_FAILED" and again.value.details["step"] == "connect"
    assert (await query_host(client, host_uuid))["status"] == "Disconnected"
    assert user in BrokerAdmin().users() and queue in broker_queues()
    assert fakehost.agent_pid() is not None
    assert await client.api("DeleteHost", {"uuid": host_uuid}) == {}
    assert user not in BrokerAdmin().users() and queue not in broker_queues()


# ---------------------------------------------------------------------- (2) real guests


@pytest.fixture
def workdir():
    # /var/tmp, not pytest's 0700 tmp: libvirt's qemu user must reach the volumes.
    path = Path(f"/var/tmp/rs-e2e-{uuidlib.uuid4().hex[:8]}")
    path.mkdir(mode=0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def libvirt_netns(libvirtd):
    """The network namespace of libvirtd (where guests' taps are made), by a name the agent can
    use with ``ip -n``; the machine's own namespace gets a name for the test when libvirtd runs
    there."""
    if libvirtd.netns is not None:
        yield libvirtd.netns
        return
    name = f"rsroot{uuidlib.uuid4().hex[:6]}"
    sh("ip", "netns", "attach", name, "1")
    try:
        yield name
    finally:
        sh("ip", "netns", "del", name, check=False)  # only the name goes


@pytest.fixture
def uplink(libvirt_netns):
    """The "physical" interface of the guests' L2 network, in libvirtd's namespace; the agent
    builds the L2's bridge on it there."""
    name = f"rsp{uuidlib.uuid4().hex[:6]}"
    sh("ip", "-n", libvirt_netns, "link", "add", name, "type", "veth", "peer", "name", f"{name}x")
    try:
        yield name
    finally:
        sh("ip", "-n", libvirt_netns, "link", "del", name, check=False)
        sh("ip", "-n", libvirt_netns, "link", "del", f"br_{name}"[:10], check=False)


@pytest.fixture
def vms():
    """VM uuids a test creates: gone from libvirt at the end whatever happened."""
    created: list[str] = []
    yield created
    conn = libvirt.open("qemu:///system")
    try:
        for vm in created:
            try:
                dom = conn.lookupByUUIDString(vm)
            except libvirt.libvirtError:
                continue
            if dom.isActive():
                dom.destroy()
            dom.undefine()
    finally:
        conn.close()


def domain(vm_uuid: str) -> tuple[int, int, str] | None:
    """(state, id, live XML) as libvirt itself says, on a connection of the test's own; None when
    libvirt has no such domain."""
    conn = libvirt.open("qemu:///system")
    try:
        try:
            dom = conn.lookupByUUIDString(vm_uuid)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise
        return dom.state()[0], dom.ID(), dom.XMLDesc(0)
    finally:
        conn.close()


def console(workdir: Path, vm_uuid: str) -> str:
    try:
        return (workdir / "console" / f"{vm_uuid}.log").read_text(errors="replace")
    except FileNotFoundError:
        return ""


async def booted(workdir: Path, vm_uuid: str) -> str:
    # The log starts afresh at every start of the guest (append='off').
    return await until(
        lambda: "RINGSTACK-GUEST-READY acpi=1" in (text := console(workdir, vm_uuid)) and text,
        BOOT_TIMEOUT,
        f"the guest to boot; its console so far:\n{console(workdir, vm_uuid)[-2000:]}",
    )


async def test_real_guests_run_through_the_api_on_a_host_added_with_add_kvm_host(
    kvm_node, client, fakehost, hosts, vms, libvirtd, libvirt_netns, guest, workdir, uplink
):
    await kvm_node(
        libvirt_uri="qemu:///system",
        netns=libvirt_netns,
        console_log_dir=str(workdir / "console"),
        stop_timeout=60,
    )
    api = client.api
    zone, cluster = await kvm_cluster(client)

    # the host, by its SSH key this time
    host_uuid = uuidlib.uuid4().hex
    hosts.append(host_uuid)
    started = time.monotonic()
    body = {
        "clusterUuid": cluster,
        "name": "kvm-1",
        "managementIp": fakehost.ip,
        "sshKey": fakehost.client_key,
        "resourceUuid": host_uuid,
    }
    host = (await api("AddKVMHost", body, timeout=DEPLOY_TIMEOUT))["inventory"]
    print(f"AddKVMHost: {time.monotonic() - started:.1f} s")
    conn = libvirt.open("qemu:///system")
    try:
        _model, memory_mib, cpus, *_ = conn.getInfo()
    finally:
        conn.close()
    assert host["status"] == "Connected"
    assert (host["totalCpu"], host["totalMemorySize"]) == (cpus, memory_mib * MiB)

    # storage, an image that boots by itself, an offering, a network
    ps_dir, bs_dir = workdir / "ps", workdir / "bs"
    ps_dir.mkdir(mode=0o755)
    bs_dir.mkdir(mode=0o755)
    ps = (
        await api(
            "AddLocalPrimaryStorage",
            {"zoneUuid": zone, "name": "ps", "url": str(ps_dir), "totalCapacity": 100 * GiB},
        )
    )["inventory"]["uuid"]
    await api("AttachPrimaryStorageToCluster", {"primaryStorageUuid": ps, "clusterUuid": cluster})
    bs = (await api("AddLocalDirBackupStorage", {"name": "bs", "url": str(bs_dir)}))["inventory"]["uuid"]
    await api("AttachBackupStorageToZone", {"backupStorageUuid": bs, "zoneUuid": zone})
    image = (
        await api(
            "AddImage",
            {"name": "guest", "url": f"file://{guest.disk}", "format": "raw", "backupStorageUuids": [bs]},
            timeout=120,
        )
    )["inventory"]
    assert image["status"] == "Ready"
    offering = (await api("CreateInstanceOffering", {"name": "tiny", "cpuNum": 1, "memorySize": 128 * MiB}))[
        "inventory"
    ]["uuid"]
    l2 = (await api("CreateL2NoVlanNetwork", {"zoneUuid": zone, "name": "l2", "physicalInterface": uplink}))[
        "inventory"
    ]["uuid"]
    await api("AttachL2NetworkToCluster", {"l2NetworkUuid": l2, "clusterUuid": cluster})
    l3 = (await api("CreateL3Network", {"l2NetworkUuid": l2, "name": "l3"}))["inventory"]["uuid"]
    await api("AddIpRangeByNetworkCidr", {"l3NetworkUuid": l3, "name": "r", "networkCidr": "10.20.0.0/24"})

    # CreateVmInstance: libvirt runs it (QEMU, TCG), booting from its root volume
    vm_uuid = uuidlib.uuid4().hex
    vms.append(vm_uuid)
    request = {
        "name": "vm-1",
        "instanceOfferingUuid": offering,
        "imageUuid": image["uuid"],
        "l3NetworkUuids": [l3],
        "resourceUuid": vm_uuid,
    }
    started = time.monotonic()
    vm = (await api("CreateVmInstance", request, timeout=VM_TIMEOUT))["inventory"]
    print(f"CreateVmInstance: {time.monotonic() - started:.1f} s")
    assert (vm["state"], vm["hostUuid"]) == ("Running", host_uuid)
    (root,) = [v for v in vm["allVolumes"] if v["type"] == "Root"]
    assert root["installPath"].startswith(f"{ps_dir}/volumes/")
    state, first_id, xml = domain(vm_uuid)
    assert state == libvirt.VIR_DOMAIN_RUNNING
    live = ET.fromstring(xml)
    assert live.get("type") == "qemu"
    assert live.find("os/kernel") is None and live.find("os/boot").get("dev") == "hd"
    assert [d.find("source").get("file") for d in live.iterfind("devices/disk")] == [root["installPath"]]
    (nic,) = vm["vmNics"]
    assert live.find("devices/interface/mac").get("address") == nic["mac"]
    assert live.find("devices/interface/source").get("bridge") == f"br_{uplink}"[:10]
    text = await booted(workdir, vm_uuid)
    assert "SYSLINUX" in text  # the BIOS booted the disk, whose loader booted the kernel
    assert (await query_host(client, host_uuid))["availableCpu"] == cpus - 1

    # ReconnectHost with the guest running: the agent is deployed again and restarted, the guest
    # is left alone, and the host's capacity still counts it
    again = (await api("ReconnectHost", {"uuid": host_uuid}, timeout=DEPLOY_TIMEOUT))["inventory"]
    assert (again["status"], again["availableCpu"]) == ("Connected", cpus - 1)
    assert domain(vm_uuid)[:2] == (libvirt.VIR_DOMAIN_RUNNING, first_id)
    found = await api("QueryVmInstance", {"conditions": [{"name": "uuid", "op": "=", "value": vm_uuid}]})
    assert [v["state"] for v in found["inventories"]] == ["Running"]

    async def vm_api(name: str, **extra) -> dict:
        return (await api(name, {"uuid": vm_uuid, **extra}, timeout=VM_TIMEOUT))["inventory"]

    # StopVmInstance: the ACPI power button, which the guest obeys
    assert (await vm_api("StopVmInstance", type="grace", timeout=60))["state"] == "Stopped"
    assert "RINGSTACK-GUEST-POWEROFF acpi" in console(workdir, vm_uuid)
    assert domain(vm_uuid)[0] == libvirt.VIR_DOMAIN_SHUTOFF
    assert (await query_host(client, host_uuid))["availableCpu"] == cpus

    # StartVmInstance: a new QEMU process, booting again
    assert (await vm_api("StartVmInstance"))["state"] == "Running"
    state, second_id, _ = domain(vm_uuid)
    assert state == libvirt.VIR_DOMAIN_RUNNING and second_id > first_id
    await booted(workdir, vm_uuid)

    # RebootVmInstance: down (ACPI) and up again
    assert (await vm_api("RebootVmInstance"))["state"] == "Running"
    state, third_id, _ = domain(vm_uuid)
    assert state == libvirt.VIR_DOMAIN_RUNNING and third_id > second_id
    await booted(workdir, vm_uuid)

    # DestroyVmInstance: gone from libvirt; its root volume stays (the VM can be recovered)
    assert (await vm_api("DestroyVmInstance"))["state"] == "Destroyed"
    assert domain(vm_uuid) is None
    assert await asyncio.to_thread(Path(root["installPath"]).exists)
    assert (await query_host(client, host_uuid))["availableCpu"] == cpus

    # ExpungeVmInstance: the VM and its root volume are gone, on the host too
    assert await api("ExpungeVmInstance", {"uuid": vm_uuid}, timeout=VM_TIMEOUT) == {}
    assert not await asyncio.to_thread(Path(root["installPath"]).exists)
    found = await api("QueryVmInstance", {"conditions": [{"name": "uuid", "op": "=", "value": vm_uuid}]})
    assert found["inventories"] == []

    await api("DeleteHost", {"uuid": host_uuid})
    assert agent_username(client.topology.namespace, host_uuid) not in BrokerAdmin().users()
