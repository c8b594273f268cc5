"""An agent's broker user has least privilege: its agent works with it, and every other path is
refused by the broker (the channel is closed with ACCESS_REFUSED)."""

from __future__ import annotations

import uuid as uuidlib

import aio_pika
import aiormq
import pytest

from agents.kvm.config import AgentConfig
from mgmt.core.brokeradmin import BrokerAdmin
from schema.agent import ConnectCommand, ConnectReply, StartVmCommand, VmStateReply
from tests.support.cluster import until
from tests.system.kvmsupport import (
    InProcessAgent,
    delete_agent_queues,
    libvirt_test_uri,
    vm_spec,
)


@pytest.fixture
async def creds(namespace, client):
    """A per-host user for a fresh host, made the way deployment makes it (after the management
    side declared the exchanges: the ``client`` bus does that)."""
    admin = BrokerAdmin()
    host = uuidlib.uuid4().hex
    credentials = await admin.ensure_agent_user_async(namespace, host)
    others: list[str] = []  # other hosts' queues a test declares
    try:
        yield host, credentials, others
    finally:
        await admin.delete_agent_user_async(namespace, host)
        delete_agent_queues(namespace, host, *others)


async def test_the_agent_works_with_its_own_least_privilege_user(
    creds, namespace, broker_url, client, tmp_path
):
    host, credentials, _ = creds
    config = AgentConfig(
        host_uuid=host,
        broker_url=credentials.url(broker_url),
        namespace=namespace,
        libvirt_uri=libvirt_test_uri(tmp_path),
        domain_type="qemu",
    )
    kvm = await InProcessAgent.start(config, client)
    try:
        assert (await kvm.client.call(ConnectCommand(host_uuid=host), ConnectReply)).host_uuid == host
        spec = vm_spec()
        reply = await kvm.client.call(StartVmCommand(host_uuid=host, vm=spec), VmStateReply)
        assert reply.state == "Running"
        # A report (a guest shutting itself down) goes out on the events exchange under its own key;
        # a refused publish would have closed the agent's connection and failed the report.
        connections = kvm.bus.connection_count
        await kvm.agent.hypervisor.call(lambda c: c.lookupByUUIDString(spec.uuid).shutdown(), "shutdown")
        await until(lambda: kvm.reports, 10, "the vm_state report")
        await kvm.server.report(host, "vm_state", kvm.reports[0])
        assert kvm.bus.connection_count == connections and kvm.bus.connected
    finally:
        await kvm.close()


async def _refused(url: str, action) -> str:
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        with pytest.raises(aiormq.exceptions.ChannelAccessRefused) as err:
            await action(channel)
        return str(err.value)
    finally:
        await connection.close()


async def test_an_agent_user_can_reach_nothing_but_its_own_paths(creds, namespace, broker_url, client):
    host, credentials, others = creds
    url = credentials.url(broker_url)
    other_host = uuidlib.uuid4().hex
    others.append(other_host)
    await client.declare_queue(client.topology.agent_queue(other_host))
    await client.declare_queue(client.topology.api_queue)
    message = aio_pika.Message(b'{"name": "x"}')

    async def publish_default(routing_key):
        async def act(channel):
            await channel.default_exchange.publish(message, routing_key=routing_key)

        return act

    for queue in (
        f"{namespace}.api",
        client.topology.agent_queue(other_host).name,
        client.topology.node_queue(uuidlib.uuid4().hex).name,
        client.topology.agent_queue(host).name,  # even its own queue: agents do not send commands
    ):
        assert "ACCESS_REFUSED" in await _refused(url, await publish_default(queue))

    async def report_as_other_host(channel):
        exchange = await channel.get_exchange(f"{namespace}.events", ensure=False)
        await exchange.publish(message, routing_key=f"agent.{other_host}.vm_state")

    assert "agent." + other_host in await _refused(url, report_as_other_host)

    async def ignore(message):
        pass

    async def consume_other_agent(channel):
        queue = await channel.get_queue(client.topology.agent_queue(other_host).name, ensure=False)
        await queue.consume(ignore)

    assert "ACCESS_REFUSED" in await _refused(url, consume_other_agent)

    async def declare_exchange(channel):
        await channel.declare_exchange(f"{namespace}.evil", "fanout")

    assert "ACCESS_REFUSED" in await _refused(url, declare_exchange)

    # What it may do: report under its own key.
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(f"{namespace}.events", ensure=False)
        await exchange.publish(message, routing_key=f"agent.{host}.vm_state")
    finally:
        await connection.close()
