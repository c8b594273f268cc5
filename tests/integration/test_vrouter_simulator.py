"""The simulator answers the virtual-router protocol: the same state rules as the real agent, rule
and entry counts, syncs in parts, faults; over the real broker."""

from __future__ import annotations

import uuid as uuidlib

import pytest

from bus.errors import RingstackError
from mgmt.core.agents import AgentClient, sync_vrouter
from schema import vrouter as vr
from schema.agent_base import ConnectCommand, ConnectReply


def uid() -> str:
    return uuidlib.uuid4().hex


@pytest.fixture
async def vrouter(simulator, client):
    vr_uuid = uid()
    reply = await client.call(simulator.control_queue.name, "simulator.add_vrouters", {"vrouters": [vr_uuid]})
    assert reply == {"vrouters": 1}
    agents = AgentClient(client, default_timeout=20, protocol=vr.VirtualRouterAgent)
    await agents.call(
        vr.ConfigureNicsCommand(
            host_uuid=vr_uuid,
            nics=[
                vr.NicConfig(mac="02:00:00:00:01:01", role="Public", address="203.0.113.1/24"),  # type: ignore[arg-type]
                vr.NicConfig(mac="02:00:00:00:02:01", role="Guest", address="10.9.0.1/16"),  # type: ignore[arg-type]
            ],
        ),
        vr.ChangeReply,
    )
    return vr_uuid, agents


async def test_a_big_sync_in_parts_then_incremental_changes_are_counted(vrouter, simulator):
    vr_uuid, agents = vrouter
    connected = await agents.call(ConnectCommand(host_uuid=vr_uuid), ConnectReply)
    assert connected.facts.hypervisor == "vrouter"
    facts = await agents.call(vr.FactsCommand(host_uuid=vr_uuid), vr.VrFacts)
    assert facts.firewall == "simulator"
    state = vr.VrState(
        eips=[
            vr.Eip(
                uuid=uid(),
                vip_ip=f"198.18.{i // 250}.{i % 250 + 1}",
                guest_ip=f"10.9.{i // 250}.{i % 250 + 2}",
            )
            for i in range(3000)
        ],  # type: ignore[arg-type]
        dhcp=[
            vr.DhcpEntry(mac=f"02:10:00:00:{i >> 8:02x}:{i & 255:02x}", ip=f"10.9.{i // 250}.{i % 250 + 2}")
            for i in range(3000)
        ],  # type: ignore[arg-type]
    )
    assert len(vr.split_state(state)) == 3
    reply = await sync_vrouter(agents, vr_uuid, state)
    assert reply.changed and reply.counts.eips == 3000 and reply.counts.dhcp_entries == 3000
    assert reply.counts.nat_rules == 2 * 3000 + 4
    assert not (await sync_vrouter(agents, vr_uuid, state)).changed
    eip = vr.Eip(uuid=uid(), vip_ip="198.19.0.1", guest_ip="10.9.200.2")  # type: ignore[arg-type]
    created = await agents.call(vr.EipCreateCommand(host_uuid=vr_uuid, eip=eip), vr.ChangeReply)
    assert created.changed and created.counts.eips == 3001
    assert not (await agents.call(vr.EipCreateCommand(host_uuid=vr_uuid, eip=eip), vr.ChangeReply)).changed
    removed = await agents.call(vr.EipRemoveCommand(host_uuid=vr_uuid, uuid=eip.uuid), vr.ChangeReply)
    assert removed.changed and removed.counts.eips == 3000
    assert simulator.vrouters[vr_uuid].counts().nat_rules == 2 * 3000 + 4
    # The same conflicts as the real agent.
    pf = vr.PortForwarding(
        uuid=uid(), vip_ip="198.18.0.1", protocol="TCP", vip_port_start=80, vip_port_end=80,  # type: ignore[arg-type]
        private_port_start=80, private_port_end=80, guest_ip="10.9.0.2",  # type: ignore[arg-type]
    )  # fmt: skip
    with pytest.raises(RingstackError) as err:
        await agents.call(vr.PortForwardingCreateCommand(host_uuid=vr_uuid, rule=pf), vr.ChangeReply)
    assert err.value.code == vr.VrErrors.CONFLICT


async def test_faults_are_injected_into_vr_commands(vrouter, simulator, client):
    vr_uuid, agents = vrouter
    await client.call(
        simulator.control_queue.name,
        "simulator.configure",
        {"hostUuid": vr_uuid, "command": "vrouter.eip.create", "fault": {"failNth": [1]}},
    )
    eip = vr.Eip(uuid=uid(), vip_ip="198.19.0.1", guest_ip="10.9.200.2")  # type: ignore[arg-type]
    with pytest.raises(RingstackError) as err:
        await agents.call(vr.EipCreateCommand(host_uuid=vr_uuid, eip=eip), vr.ChangeReply)
    assert err.value.code == "AGENT.INJECTED_FAILURE"
    assert (await agents.call(vr.EipCreateCommand(host_uuid=vr_uuid, eip=eip), vr.ChangeReply)).changed
    inventory = await client.call(simulator.control_queue.name, "simulator.inventory", {})
    assert inventory["vrouters"][vr_uuid]["counts"]["eips"] == 1
