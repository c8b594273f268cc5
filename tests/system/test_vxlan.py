"""VXLAN L2 networks made by the KVM agent, proven with packets between two namespace hosts.

The hosts' underlay is one veth between them (each end holds the host's VTEP address). Each host's
agent runs in-process on the real broker with its commands inside its namespace; guests are
namespaces plugged into the bridges the agents made. Guests on one VNI on two hosts reach each
other; on different VNIs (same addresses plan) they do not.
"""

from __future__ import annotations

import uuid as uuidlib

import pytest

from schema.agent import BridgeReply, DeleteBridgeCommand, EmptyReply, EnsureBridgeCommand, L2Spec, VtepSpec
from tests.system.kvmsupport import InProcessAgent, Netns, delete_agent_queues, libvirt_test_uri
from tests.system.test_security_groups import agent_config

VTEPS = ("192.168.77.1", "192.168.77.2")


def vxlan(vni: int, vteps: dict[str, str], uuid: str) -> L2Spec:
    """``vteps``: host uuid -> VTEP address, the whole pool (each agent picks its own)."""
    return L2Spec(
        uuid=uuid,
        type="L2VxlanNetwork",
        physical_interface="eth0",
        bridge_name=f"br_vx{vni}",
        vni=vni,
        vteps=[VtepSpec(host_uuid=h, vtep_ip=ip) for h, ip in vteps.items()],
    )


@pytest.fixture
async def hosts(tmp_path, client, broker_url, namespace):
    a, b = Netns("rskx"), Netns("rskx")
    made: list[InProcessAgent] = []
    spaces = [a, b]
    try:
        a.ip("link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", b.name)
        for ns, vtep in zip((a, b), VTEPS, strict=True):
            ns.ip("addr", "add", f"{vtep}/24", "dev", "eth0")
            ns.ip("link", "set", "eth0", "up")
        for i, ns in enumerate((a, b)):
            (tmp_path / str(i)).mkdir()
            config = agent_config(tmp_path / str(i), broker_url, namespace, ns.name, uuidlib.uuid4().hex)
            config = config.model_copy(
                update={
                    "libvirt_uri": libvirt_test_uri(tmp_path / str(i)),
                    "flat_dir": str(tmp_path / str(i) / "flat"),
                }
            )
            made.append(await InProcessAgent.start(config, client))
        yield list(zip((a, b), made, strict=True)), spaces
    finally:
        for agent in made:
            agent.agent.flat.apply([])  # no DHCP namespace or dnsmasq left behind
            await agent.close()
            delete_agent_queues(namespace, agent.host_uuid)
        for ns in spaces:
            ns.close()


def guest(host: Netns, bridge: str, address: str, spaces: list[Netns]) -> Netns:
    g = Netns("rskg")
    spaces.append(g)
    port = f"vm{g.name[-6:]}"
    host.ip("link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", g.name)
    host.ip("link", "set", port, "master", bridge)
    host.ip("link", "set", port, "up")
    g.ip("addr", "add", f"{address}/24", "dev", "eth0")
    g.ip("link", "set", "eth0", "up")
    return g


def pings(src: Netns, address: str) -> bool:
    return src.run("busybox", "ping", "-c", "1", "-W", "1", address, check=False).returncode == 0


async def test_guests_on_one_vni_reach_each_other_across_hosts_and_not_across_vnis(hosts):
    pairs, spaces = hosts
    (a, agent_a), (b, _) = pairs
    nets = {100: uuidlib.uuid4().hex, 200: uuidlib.uuid4().hex}
    pool = {agent.host_uuid: vtep for (_, agent), vtep in zip(pairs, VTEPS, strict=True)}
    for vni, l2_uuid in nets.items():
        for ns, agent in pairs:  # one spec for both hosts: each picks its own VTEP
            reply = await agent.client.call(
                EnsureBridgeCommand(host_uuid=agent.host_uuid, l2=vxlan(vni, pool, l2_uuid)), BridgeReply
            )
            assert reply.bridge_name == f"br_vx{vni}"
            assert ns.master(f"vxlan{vni}") == f"br_vx{vni}"

    # The same addresses on both VNIs: only the VNI keeps them apart.
    g100a = guest(a, "br_vx100", "10.50.0.1", spaces)
    guest(b, "br_vx100", "10.50.0.2", spaces)
    guest(a, "br_vx200", "10.50.0.3", spaces)
    g200b = guest(b, "br_vx200", "10.50.0.4", spaces)
    assert pings(g100a, "10.50.0.2")
    assert pings(g200b, "10.50.0.3")
    assert not pings(g100a, "10.50.0.4")
    assert not pings(g200b, "10.50.0.1")

    # Ensuring again changes nothing; a peer list change rewrites only the flood entries.
    again = vxlan(100, pool, nets[100])
    assert not agent_a.agent.bridges.ensure(again, agent_a.host_uuid)

    def flood() -> list[str]:
        out = a.run("bridge", "fdb", "show", "dev", "vxlan100").stdout.splitlines()
        return sorted(
            line.split(" dst ")[1].split()[0] for line in out if line.startswith("00:00:00:00:00:00")
        )

    assert flood() == [VTEPS[1]]
    grown = vxlan(100, {**pool, "c" * 32: "192.168.77.9"}, nets[100])  # a third host joins the pool
    assert agent_a.agent.bridges.ensure(grown, agent_a.host_uuid)
    assert flood() == sorted([VTEPS[1], "192.168.77.9"])
    assert agent_a.agent.bridges.ensure(again, agent_a.host_uuid)
    assert flood() == [VTEPS[1]]
    assert pings(g100a, "10.50.0.2")


async def test_a_vxlan_bridge_in_use_is_kept_and_an_unused_one_deleted(hosts):
    pairs, spaces = hosts
    (a, agent_a), _ = pairs
    l2 = vxlan(300, {agent_a.host_uuid: VTEPS[0]}, uuidlib.uuid4().hex)
    await agent_a.client.call(EnsureBridgeCommand(host_uuid=agent_a.host_uuid, l2=l2), BridgeReply)
    g = guest(a, "br_vx300", "10.60.0.1", spaces)
    with pytest.raises(Exception) as err:
        await agent_a.client.call(DeleteBridgeCommand(host_uuid=agent_a.host_uuid, l2=l2), EmptyReply)
    assert "still has VM NICs" in str(err.value)
    a.ip("link", "del", f"vm{g.name[-6:]}")
    await agent_a.client.call(DeleteBridgeCommand(host_uuid=agent_a.host_uuid, l2=l2), EmptyReply)
    assert not a.has_link("br_vx300") and not a.has_link("vxlan300")


def test_vxlan_specs_are_checked():
    with pytest.raises(ValueError):
        L2Spec(uuid="a" * 32, type="L2VxlanNetwork", physical_interface="eth0", bridge_name="b")
    with pytest.raises(ValueError):
        L2Spec(uuid="a" * 32, type="L2NoVlanNetwork", physical_interface="eth0", bridge_name="b", vni=5)
    with pytest.raises(ValueError):
        vxlan(5, {"a" * 32: "not-an-ip"}, "a" * 32)
    with pytest.raises(ValueError):  # no VTEP for this host in the pool
        vxlan(5, {"a" * 32: "10.0.0.1"}, "a" * 32).local_vtep("b" * 32)
    assert vxlan(5, {"a" * 32: "10.0.0.1", "b" * 32: "10.0.0.2"}, "a" * 32).local_vtep("b" * 32) == (
        "10.0.0.2",
        ["10.0.0.1"],
    )
