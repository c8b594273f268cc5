"""Flat-network DHCP served by the KVM agent on each host, proven with DHCP packets between two
namespace hosts joined by a VXLAN network: a guest gets its IPAM address from its own host's
dnsmasq, never from another host's (both servers have the same address), and the servers go with
the desired state."""

from __future__ import annotations

import re
import uuid as uuidlib

from schema.agent import ApplyFlatDhcpCommand, BridgeReply, EnsureBridgeCommand, FlatDhcpL3Spec, FlatDhcpReply
from tests.system.kvmsupport import Netns
from tests.system.test_vxlan import VTEPS, hosts, vxlan  # noqa: F401  (hosts: the fixture)

SERVER = "10.70.0.2"


def plain_guest(host: Netns, bridge: str, mac: str, spaces: list[Netns]) -> Netns:
    """A guest with a MAC and no address yet: it asks DHCP."""
    g = Netns("rskg")
    spaces.append(g)
    port = f"vm{g.name[-6:]}"
    host.ip("link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", g.name)
    host.ip("link", "set", port, "master", bridge)
    host.ip("link", "set", port, "up")
    g.ip("link", "set", "eth0", "address", mac)
    g.ip("link", "set", "eth0", "up")
    return g


def lease(guest: Netns) -> tuple[str, str] | None:
    """(address, server) of a lease udhcpc obtains within 3 tries of 1 s, configuring nothing."""
    done = guest.run(
        "busybox",
        "udhcpc",
        "-i",
        "eth0",
        "-n",
        "-q",
        "-f",
        "-t",
        "3",
        "-T",
        "1",
        "-s",
        "/bin/true",
        check=False,
    )
    found = re.search(r"lease of (\S+) obtained from (\S+?),", done.stdout + done.stderr)
    return (found.group(1), found.group(2)) if found else None


def l3_spec(l3: str, entries: dict[str, str]) -> FlatDhcpL3Spec:
    return FlatDhcpL3Spec(
        l3_network_uuid=l3,
        bridge_name="br_vx400",
        uplink="vxlan400",
        dhcp_server_ip=SERVER,
        netmask="255.255.255.0",
        gateway="10.70.0.1",
        dns=["10.70.0.1"],
        entries=[
            {"mac": mac, "ip": ip, "hostname": f"vm-{ip.rsplit('.', 1)[1]}"}  # type: ignore[misc]
            for mac, ip in entries.items()
        ],
    )


async def test_each_host_answers_only_its_own_guests(hosts):  # noqa: F811
    pairs, spaces = hosts
    (a, agent_a), (b, agent_b) = pairs
    pool = {agent.host_uuid: vtep for (_, agent), vtep in zip(pairs, VTEPS, strict=True)}
    l2 = vxlan(400, pool, uuidlib.uuid4().hex)
    for _, agent in pairs:
        await agent.client.call(EnsureBridgeCommand(host_uuid=agent.host_uuid, l2=l2), BridgeReply)
    l3 = uuidlib.uuid4().hex
    macs = {"g1": "fa:16:3e:00:01:01", "g2": "fa:16:3e:00:01:02", "g3": "fa:16:3e:00:01:03"}
    g1 = plain_guest(a, "br_vx400", macs["g1"], spaces)
    g2 = plain_guest(b, "br_vx400", macs["g2"], spaces)
    g3 = plain_guest(b, "br_vx400", macs["g3"], spaces)

    # Host a's server also holds g2's entry (as if stale): it must still never answer g2 on host b.
    state_a = [l3_spec(l3, {macs["g1"]: "10.70.0.11", macs["g2"]: "10.70.0.12"})]
    state_b = [l3_spec(l3, {macs["g3"]: "10.70.0.13"})]
    for agent, state in ((agent_a, state_a), (agent_b, state_b)):
        reply = await agent.client.call(
            ApplyFlatDhcpCommand(host_uuid=agent.host_uuid, l3_networks=state), FlatDhcpReply
        )
        assert reply.changed and reply.servers == 1

    assert lease(g1) == ("10.70.0.11", SERVER)
    assert lease(g3) == ("10.70.0.13", SERVER)
    assert lease(g2) is None

    # The overlay itself works between the hosts: only DHCP is kept local.
    g1.ip("addr", "add", "10.70.0.11/24", "dev", "eth0")
    g2.ip("addr", "add", "10.70.0.12/24", "dev", "eth0")
    assert g1.run("busybox", "ping", "-c", "1", "-W", "2", "10.70.0.12", check=False).returncode == 0

    again = await agent_a.client.call(
        ApplyFlatDhcpCommand(host_uuid=agent_a.host_uuid, l3_networks=state_a), FlatDhcpReply
    )
    assert not again.changed

    # A new entry is served after a reload; a host without flat L3s keeps no server.
    g2.ip("addr", "flush", "dev", "eth0")
    state_b = [l3_spec(l3, {macs["g3"]: "10.70.0.13", macs["g2"]: "10.70.0.22"})]
    await agent_b.client.call(
        ApplyFlatDhcpCommand(host_uuid=agent_b.host_uuid, l3_networks=state_b), FlatDhcpReply
    )
    got = lease(g2)
    assert got == ("10.70.0.22", SERVER)
    gone = await agent_a.client.call(
        ApplyFlatDhcpCommand(host_uuid=agent_a.host_uuid, l3_networks=[]), FlatDhcpReply
    )
    assert gone.changed and gone.servers == 0
    assert not agent_a.agent.flat._namespaces()
    assert "rs-flat" not in a.run("ebtables-save").stdout
    assert lease(g1) is None
