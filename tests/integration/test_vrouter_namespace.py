"""The virtual-router agent with real packets: the agent process in a namespace standing for the VR,
guests on its guest bridge, an outside namespace on its public side (see tests/support/vrlab.py).
Driven over the bus with the agent's own broker user, as the management side will drive it."""

from __future__ import annotations

import asyncio
import signal
import uuid as uuidlib

import pytest

from bus.errors import RingstackError
from schema import vrouter as vr
from tests.support.netns import await_until
from tests.support.vrlab import OUTSIDE_2, PUBLIC_GW, VrLab

G1 = "02:00:00:00:0a:01"
G2 = "02:00:00:00:0a:02"
G3 = "02:00:00:00:0a:03"
VR_PUBLIC_IP = "203.0.113.1"


def uid() -> str:
    return uuidlib.uuid4().hex


@pytest.fixture
async def lab(tmp_path, namespace, broker_url, client):
    lab = VrLab(tmp_path, namespace, broker_url, reconcile_interval=1)
    try:
        await asyncio.to_thread(lab.build)
        await lab.start_agent()
        agents = lab.client(client)
        reply = await agents.call(lab.nics(), vr.ChangeReply)
        assert reply.changed
        lab.agents = agents  # type: ignore[attr-defined]
        yield lab
    finally:
        await lab.close()


def base_state(**kw: object) -> vr.VrState:
    fields: dict[str, object] = {
        "snats": [vr.Snat(guest_cidr="10.9.0.0/24", public_ip=VR_PUBLIC_IP)],  # type: ignore[arg-type]
        "dhcp": [
            vr.DhcpEntry(mac=G1, ip="10.9.0.11", hostname="guest-one"),  # type: ignore[arg-type]
            vr.DhcpEntry(mac=G2, ip="10.9.0.12", hostname="guest-two"),  # type: ignore[arg-type]
        ],
        "dns": vr.DnsSettings(domain="tenant.example"),
    }
    fields.update(kw)
    return vr.VrState.model_validate(fields)


async def sync(lab: VrLab, state: vr.VrState) -> vr.ChangeReply:
    return await lab.agents.call(vr.SyncCommand(host_uuid=lab.vr_uuid, state=state), vr.ChangeReply)  # type: ignore[attr-defined]


async def facts(lab: VrLab) -> vr.VrFacts:
    return await lab.agents.call(vr.FactsCommand(host_uuid=lab.vr_uuid), vr.VrFacts)  # type: ignore[attr-defined]


async def test_dhcp_gives_the_ipam_address_and_dns_resolves_through_the_vr(lab):
    g1, g2 = lab.add_guest(G1), lab.add_guest(G2)
    assert (await sync(lab, base_state())).changed
    lease = await asyncio.to_thread(lab.dhcp, g1)
    assert lease["ip"] == "10.9.0.11"
    assert lease["router"] == "10.9.0.1"
    assert lease["dns"].split() == ["10.9.0.1"]
    assert lease["domain"] == "tenant.example"
    assert (await asyncio.to_thread(lab.dhcp, g2))["ip"] == "10.9.0.12"
    # The VR answers the guests' names (the L3 DNS would take the rest).
    out = (await asyncio.to_thread(g1.run, "busybox", "nslookup", "guest-two.tenant.example", "10.9.0.1")).stdout
    assert "Address: 10.9.0.12" in out
    before = await facts(lab)
    # A third guest is added live: the same dnsmasq serves it, reloaded, never restarted.
    g3 = lab.add_guest(G3)
    entry = vr.DhcpEntry(mac=G3, ip="10.9.0.13", hostname="guest-three")  # type: ignore[arg-type]
    reply = await lab.agents.call(vr.DhcpCommand(host_uuid=lab.vr_uuid, entries=[entry]), vr.ChangeReply)
    assert reply.changed and reply.counts.dhcp_entries == 3
    assert (await asyncio.to_thread(lab.dhcp, g3))["ip"] == "10.9.0.13"
    after = await facts(lab)
    assert after.dnsmasq_pid == before.dnsmasq_pid is not None
    assert after.dnsmasq_restarts == 0
    assert after.dnsmasq_reloads > before.dnsmasq_reloads
    again = await lab.agents.call(vr.DhcpCommand(host_uuid=lab.vr_uuid, entries=[entry]), vr.ChangeReply)
    assert not again.changed
