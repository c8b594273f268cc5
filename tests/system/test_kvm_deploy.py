"""AddKVMHost's deployment for real: a host that is a network namespace with its own sshd, the
Ansible playbook run over SSH, the agent installed from the management node's bundle into the
host's own directory, started there (inside the namespace) and connected to the broker with its own
least-privilege user, through the broker's address on the host's network (a relay on the root end
of the veth: the shared broker listens on 127.0.0.1 only).
"""

from __future__ import annotations

import asyncio
import shutil
import uuid as uuidlib
from pathlib import Path

import pytest

from agents.kvm.bundle import build_bundle
from bus.errors import RingstackError
from mgmt.core import hostdeploy
from mgmt.core.agents import AgentClient
from mgmt.core.brokeradmin import BrokerAdmin
from mgmt.core.hostdeploy import DEPLOY_FAILED, deploy_kvm_host
from schema.agent import PingCommand, PingReply, StartVmCommand, VmStateReply
from tests.support import infra
from tests.support.cluster import until
from tests.system.kvmsupport import FakeKvmHost, delete_agent_queues, deploy_failing_at, vm_spec

# Bundles are cached by build id across runs: a rerun without code changes skips the pip work.
BUNDLES = Path("/var/tmp/ringstack-test-bundles")


@pytest.fixture(scope="module")
def bundle():
    """Built once for the module: other engineers' edits to the tree must not change the build
    between the two deployments of one test."""
    return build_bundle(BUNDLES)


@pytest.fixture
def fakehost():
    base = Path(f"/var/tmp/rs-fakehost-{uuidlib.uuid4().hex[:8]}")
    base.mkdir(parents=True)
    host = FakeKvmHost(base)
    try:
        host.start_sshd()
        yield host
    finally:
        host.close()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def cleanup_broker(namespace):
    hosts: list[str] = []
    yield hosts
    for host in hosts:
        BrokerAdmin().delete_agent_user(namespace, host)
    delete_agent_queues(namespace, *hosts)


async def deploy(fakehost, client, host_uuid, bundle, **kw):
    broker_url = fakehost.relay_url
    return await deploy_kvm_host(
        host_uuid,
        fakehost.ip,
        bus=client,
        agent_broker_url=broker_url,
        agent_settings={"libvirt_uri": "test:///default", "domain_type": "qemu"},
        # libvirt_listen_tcp: the machine's libvirtd is not the role's to configure here
        playbook_vars={
            "agent_root": str(fakehost.agent_root),
            "libvirt_listen_tcp": False,
            **kw.pop("playbook_vars", {}),
        },
        bundle=bundle,
        connect_timeout=60,
        **({"ssh_key": fakehost.client_key} | kw),
    )


def broker_users_connected() -> set[str]:
    out = infra.rabbitmqctl("list_connections", "user", "--no-table-headers", "--quiet")
    return {line.strip() for line in out.splitlines()}


async def test_add_kvm_host_deploys_starts_and_connects_the_agent_then_redeploys_without_reinstalling(
    fakehost, client, cleanup_broker, bundle
):
    fakehost.relay_url = fakehost.start_broker_relay(("127.0.0.1", 5672))
    host_uuid = uuidlib.uuid4().hex
    cleanup_broker.append(host_uuid)

    result = await deploy(fakehost, client, host_uuid, bundle)
    assert result.facts.host_uuid == host_uuid and result.facts.facts.hypervisor == "qemu"
    assert result.playbook_changed and result.broker_user == f"{client.topology.namespace}.agent.{host_uuid}"
    assert set(result.seconds) == {"ssh", "credentials", "bundle", "playbook", "connect"}
    print("first deployment, seconds per step:", result.seconds)
    # The agent really runs inside the host (its namespace), installed in the host's own directory,
    # connected with its own broker user.
    pid = fakehost.agent_pid()
    assert pid is not None and pid in fakehost.ns.pids()
    cmdline = await asyncio.to_thread(Path(f"/proc/{pid}/cmdline").read_bytes)
    assert str(fakehost.agent_root / "venv").encode() in cmdline
    assert result.broker_user in broker_users_connected()
    agents = AgentClient(client, default_timeout=20)
    assert (await agents.call(PingCommand(host_uuid=host_uuid), PingReply)).host_uuid == host_uuid
    started = await agents.call(StartVmCommand(host_uuid=host_uuid, vm=vm_spec()), VmStateReply)
    assert started.state == "Running"

    # A reconnect: the installed build matches, so nothing is installed again; the agent gets a
    # fresh broker password (rotated at every deployment) and is restarted with it.
    installed = fakehost.agent_root / "installed-build"
    stamp = installed.stat().st_mtime_ns
    venv_python = (fakehost.agent_root / "venv/bin/python").stat().st_ino
    again = await deploy(fakehost, client, host_uuid, bundle)
    assert again.facts.host_uuid == host_uuid and again.build_id == result.build_id
    print("second deployment, seconds per step:", again.seconds)
    assert installed.stat().st_mtime_ns == stamp
    assert (fakehost.agent_root / "venv/bin/python").stat().st_ino == venv_python
    assert fakehost.agent_pid() not in (None, pid)
    assert (await agents.call(PingCommand(host_uuid=host_uuid), PingReply)).host_uuid == host_uuid


async def test_a_bad_password_fails_at_the_ssh_step(fakehost, client, bundle):
    fakehost.relay_url = "amqp://127.0.0.1:5672/"
    with pytest.raises(RingstackError) as err:
        await deploy(fakehost, client, uuidlib.uuid4().hex, bundle, password="not-the-password", ssh_key=None)
    assert err.value.code == DEPLOY_FAILED
    assert err.value.details["step"] == "ssh" and "authentication failed" in err.value.details["reason"]
    assert "step ssh" in err.value.message


async def test_an_unreachable_host_fails_at_the_ssh_step(fakehost, client, bundle):
    fakehost.relay_url = "amqp://127.0.0.1:5672/"
    with pytest.raises(RingstackError) as err:
        await deploy(fakehost, client, uuidlib.uuid4().hex, bundle, port=2)  # nothing listens there
    assert err.value.details["step"] == "ssh" and "cannot reach" in err.value.details["reason"]


async def test_a_failing_playbook_names_its_step_and_task(fakehost, client, cleanup_broker, bundle):
    fakehost.relay_url = fakehost.start_broker_relay(("127.0.0.1", 5672))
    host_uuid = uuidlib.uuid4().hex
    cleanup_broker.append(host_uuid)
    blocker = fakehost.base / "not-a-directory"
    await asyncio.to_thread(blocker.write_text, "a file where the agent's directory should go")
    with pytest.raises(RingstackError) as err:
        await deploy(
            fakehost, client, host_uuid, bundle, playbook_vars={"agent_root": str(blocker / "agent")}
        )
    assert err.value.code == DEPLOY_FAILED and err.value.details["step"] == "playbook"
    assert "Make the agent's directories" in err.value.details["reason"]
    assert fakehost.agent_pid() is None


# ---------------------------------------------------------------------- undo at every step


def agent_queues(namespace: str) -> set[str]:
    out = infra.rabbitmqctl("list_queues", "name", "--no-table-headers", "--quiet")
    return {q.strip() for q in out.splitlines() if q.strip().startswith(f"{namespace}.agent.")}


async def _fails_at(step, fakehost, client, host_uuid, bundle, monkeypatch) -> RingstackError:
    monkeypatch.setattr(hostdeploy, "STEPS", deploy_failing_at(step))
    try:
        with pytest.raises(RingstackError) as err:
            await deploy(fakehost, client, host_uuid, bundle)
    finally:
        monkeypatch.undo()
    assert err.value.code == DEPLOY_FAILED
    assert err.value.details["step"] == step == err.value.details["failedStep"]
    assert err.value.details["reason"] == "injected fault" and f"step {step}" in err.value.message
    assert "rollbackFailures" not in err.value.details
    return err.value


async def test_a_failure_at_any_step_of_a_first_deployment_leaves_nothing_behind(
    fakehost, client, cleanup_broker, bundle, monkeypatch
):
    fakehost.relay_url = fakehost.start_broker_relay(("127.0.0.1", 5672))
    namespace = client.topology.namespace
    host_uuid = uuidlib.uuid4().hex
    cleanup_broker.append(host_uuid)
    user = f"{namespace}.agent.{host_uuid}"
    undone = {  # what each failure undoes, latest first
        "ssh": [],
        "credentials": ["credentials"],
        "bundle": ["credentials"],
        "playbook": ["playbook", "credentials"],
        "connect": ["playbook", "credentials"],
    }
    for step, rolled_back in undone.items():
        error = await _fails_at(step, fakehost, client, host_uuid, bundle, monkeypatch)
        assert error.details["rolledBack"] == rolled_back, step
        # no broker user (nor a connection of it), no agent queue, no agent running on the host
        assert user not in BrokerAdmin().users(), step
        assert user not in broker_users_connected(), step
        assert f"{namespace}.agent.{host_uuid}" not in agent_queues(namespace), step
        assert fakehost.agent_pid() is None, step

    # The same host then deploys (nothing left in the way), and a REdeployment that fails undoes
    # nothing: the host's user, queue and running agent were there before it and stay.
    result = await deploy(fakehost, client, host_uuid, bundle)
    pid = fakehost.agent_pid()
    assert pid is not None and result.broker_user == user
    for step in ("credentials", "playbook", "connect"):
        await _fails_at(step, fakehost, client, host_uuid, bundle, monkeypatch)
        assert user in BrokerAdmin().users(), step
        assert f"{namespace}.agent.{host_uuid}" in agent_queues(namespace), step
        assert fakehost.agent_pid() is not None, step
    agents = AgentClient(client, default_timeout=20)

    async def answers() -> PingReply:  # the agent, restarted with the last password, is there
        return await agents.call(PingCommand(host_uuid=host_uuid), PingReply, timeout=5)

    await until(answers, 60, "the redeployed agent answers a ping")
