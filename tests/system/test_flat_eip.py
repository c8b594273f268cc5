"""Flat-network EIPs made by the KVM agent, proven with packets between namespace hosts: an outside
namespace on the public network reaches a guest's private address through the EIP, the guest's own
traffic leaves with the EIP as source, the EIP moves with the guest to another host, and detaching
leaves nothing behind.

Two namespace hosts share a private VXLAN network (VNI 400, the guests') and a public one (VNI 500).
The outside namespace sits on host A's public bridge. A decoy on the private network holds the
guests' gateway address (the provider network's real router, which does not route): the guest's
traffic only gets out if its gateway is the EIP's namespace, which the agent makes sure of.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid as uuidlib
from pathlib import Path

from schema.agent import ApplyFlatEipCommand, BridgeReply, EnsureBridgeCommand, FlatEipReply, FlatEipSpec
from tests.system.kvmsupport import Netns
from tests.system.test_vxlan import VTEPS, hosts, vxlan  # noqa: F401  (hosts: the fixture)

ROOT = Path(__file__).resolve().parents[2]
GUEST_IP, GUEST_GW, GUEST_MAC = "10.70.0.10", "10.70.0.1", "fa:16:3e:00:07:0a"
OUTSIDE_IP, VIP = "172.20.0.1", "172.20.0.50"


def attach(host: Netns, bridge: str, spaces: list[Netns], address: str, mac: str | None = None) -> Netns:
    ns = Netns("rskg")
    spaces.append(ns)
    port = f"vm{ns.name[-6:]}"
    host.ip("link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns.name)
    host.ip("link", "set", port, "master", bridge)
    host.ip("link", "set", port, "up")
    if mac:
        ns.ip("link", "set", "eth0", "address", mac)
    ns.ip("addr", "add", f"{address}/24", "dev", "eth0")
    ns.ip("link", "set", "eth0", "up")
    return ns


def probe(ns: Netns, *args: str) -> list[str]:
    return ["ip", "netns", "exec", ns.name, sys.executable, "-m", "tests.support.netprobe", *args]


ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def serve(ns: Netns, label: str, port: int, procs: list[subprocess.Popen[str]]) -> None:
    proc = subprocess.Popen(
        probe(ns, "serve", label, "udp", str(port)), cwd=ROOT, env=ENV, stdout=subprocess.PIPE, text=True
    )
    procs.append(proc)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"


def call(ns: Netns, host: str, port: int) -> str | None:
    done = subprocess.run(
        probe(ns, "call", "udp", host, str(port), "--timeout", "2"),
        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    return done.stdout.strip() if done.returncode == 0 else None


def eip_spec(eip_uuid: str) -> FlatEipSpec:
    return FlatEipSpec(
        eip_uuid=eip_uuid,
        vip_ip=VIP,
        vip_netmask="255.255.255.0",
        vip_gateway=OUTSIDE_IP,
        public_bridge="br_vx500",
        guest_ip=GUEST_IP,
        guest_mac=GUEST_MAC,
        guest_netmask="255.255.255.0",
        guest_gateway=GUEST_GW,
        guest_bridge="br_vx400",
        guest_uplink="vxlan400",
    )


async def test_the_eip_reaches_the_guest_and_its_traffic_leaves_from_the_vip_and_moves_with_it(hosts):  # noqa: F811
    pairs, spaces = hosts
    (a, agent_a), (b, agent_b) = pairs
    procs: list[subprocess.Popen[str]] = []
    pool = {agent.host_uuid: vtep for (_, agent), vtep in zip(pairs, VTEPS, strict=True)}
    try:
        for vni in (400, 500):
            l2 = vxlan(vni, pool, uuidlib.uuid4().hex)
            for _, agent in pairs:
                await agent.client.call(EnsureBridgeCommand(host_uuid=agent.host_uuid, l2=l2), BridgeReply)
        outside = attach(a, "br_vx500", spaces, OUTSIDE_IP)  # no route to the private network
        router = attach(b, "br_vx400", spaces, GUEST_GW)  # the provider's router: routes nothing
        guest = attach(a, "br_vx400", spaces, GUEST_IP, GUEST_MAC)
        guest.ip("route", "add", "default", "via", GUEST_GW)
        serve(guest, "guest", 7000, procs)
        serve(outside, "outside", 7001, procs)
        eip = uuidlib.uuid4().hex

        assert call(outside, VIP, 7000) is None  # nothing answers for the VIP yet
        assert call(guest, OUTSIDE_IP, 7001) is None  # nor does the guest get out
        assert guest.run("busybox", "ping", "-c", "1", "-W", "2", GUEST_GW, check=False).returncode == 0
        # (the guest has its real router's MAC cached now)
        cmd = ApplyFlatEipCommand(host_uuid=agent_a.host_uuid, eips=[eip_spec(eip)])
        first = await agent_a.client.call(cmd, FlatEipReply)
        again = await agent_a.client.call(cmd, FlatEipReply)
        assert (first.changed, again.changed, again.eips) == (True, False, 1)

        # Inbound: the outside's datagram to the VIP reaches the guest, from the outside's address.
        assert call(outside, VIP, 7000) == f"guest {OUTSIDE_IP}"
        # Outbound: the guest's datagram reaches the outside with the VIP as its source.
        assert call(guest, OUTSIDE_IP, 7001) == f"outside {VIP}"
        # Its gateway is the EIP's namespace even when it asks afresh: its ARP never reaches the
        # real router (which would otherwise learn the guest's address from the request).
        router.ip("neigh", "flush", "all")
        guest.ip("neigh", "flush", "all")
        assert call(guest, OUTSIDE_IP, 7001) == f"outside {VIP}"
        assert GUEST_IP not in router.ip("neigh", "show").stdout

        # A port knocked off its bridge (the bridge re-made) is put back by the next apply.
        a.ip("link", "set", f"ego{eip[:8]}", "nomaster")
        assert call(outside, VIP, 7000) is None
        assert (await agent_a.client.call(cmd, FlatEipReply)).changed
        assert call(outside, VIP, 7000) == f"guest {OUTSIDE_IP}"

        # The guest moves to host B (same MAC and address): A drops the EIP, B takes it up.
        a.ip("link", "del", f"vm{guest.name[-6:]}")
        procs.pop(0).kill()
        moved = attach(b, "br_vx400", spaces, GUEST_IP, GUEST_MAC)
        moved.ip("route", "add", "default", "via", GUEST_GW)
        serve(moved, "moved", 7000, procs)
        assert (
            await agent_a.client.call(ApplyFlatEipCommand(host_uuid=agent_a.host_uuid), FlatEipReply)
        ).changed
        assert not [n for n in agent_a.agent.flat_eip._namespaces()]
        await agent_b.client.call(
            ApplyFlatEipCommand(host_uuid=agent_b.host_uuid, eips=[eip_spec(eip)]), FlatEipReply
        )
        assert call(outside, VIP, 7000) == f"moved {OUTSIDE_IP}"
        assert call(moved, OUTSIDE_IP, 7001) == f"outside {VIP}"

        # Detached: the VIP answers no more, and the host keeps no namespace or ebtables rule.
        await agent_b.client.call(ApplyFlatEipCommand(host_uuid=agent_b.host_uuid), FlatEipReply)
        assert call(outside, VIP, 7000) is None
        assert call(moved, OUTSIDE_IP, 7001) is None
        assert not agent_b.agent.flat_eip._namespaces()
        assert "rs-eip" not in b.run("ebtables-save").stdout
    finally:
        for proc in procs:
            proc.kill()
        for _, agent in pairs:
            agent.agent.flat_eip.apply([])
