"""The virtual-router agent with real packets: the agent process in a namespace standing for the VR,
guests on its guest bridge, an outside namespace on its public side (see tests/support/vrlab.py).
Driven over the bus with the agent's own broker user, as the management side will drive it."""

from __future__ import annotations

import asyncio
import contextlib
import uuid as uuidlib

import pytest

from bus.errors import RingstackError
from schema import vrouter as vr
from tests.support.cluster import until
from tests.support.netns import wait_until
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
    out = (
        await asyncio.to_thread(g1.run, "busybox", "nslookup", "guest-two.tenant.example", "10.9.0.1")
    ).stdout
    assert "Address: 10.9.0.12" in out
    before = await facts(lab)
    # A third guest is added live: the same dnsmasq serves it, reloaded, never restarted.
    g3 = lab.add_guest(G3)
    entry = vr.DhcpEntry(mac=G3, ip="10.9.0.13", hostname="guest-three")  # type: ignore[arg-type]
    reply = await lab.agents.call(vr.DhcpAddCommand(host_uuid=lab.vr_uuid, entries=[entry]), vr.ChangeReply)
    assert reply.changed and reply.counts.dhcp_entries == 3
    assert (await asyncio.to_thread(lab.dhcp, g3))["ip"] == "10.9.0.13"
    after = await facts(lab)
    assert after.dnsmasq_pid == before.dnsmasq_pid is not None
    assert after.dnsmasq_restarts == 0
    assert after.dnsmasq_reloads > before.dnsmasq_reloads
    again = await lab.agents.call(vr.DhcpAddCommand(host_uuid=lab.vr_uuid, entries=[entry]), vr.ChangeReply)
    assert not again.changed


async def test_snat_and_eip_with_real_packets(lab):
    g1, g2 = lab.add_guest(G1), lab.add_guest(G2)
    lab.static_ip(g1, "10.9.0.11/24")
    lab.static_ip(g2, "10.9.0.12/24")
    eip = vr.Eip(uuid=uid(), vip_ip="203.0.113.10", guest_ip="10.9.0.12")  # type: ignore[arg-type]
    await sync(lab, base_state(eips=[eip]))
    server = lab.serve(lab.outside, "outside", "tcp", 8080)
    guest_server = lab.serve(g2, "guest-two", "tcp", 22)
    try:
        # SNAT: the outside sees the VR's public IP; the EIP's guest leaves as its EIP.
        assert await asyncio.to_thread(lab.call, g1, "tcp", PUBLIC_GW, 8080) == f"outside {VR_PUBLIC_IP}"
        assert await asyncio.to_thread(lab.call, g2, "tcp", PUBLIC_GW, 8080) == "outside 203.0.113.10"
        # EIP inbound: the outside reaches the guest on the EIP, and the guest sees the real source.
        assert (
            await asyncio.to_thread(lab.call, lab.outside, "tcp", "203.0.113.10", 22)
            == f"guest-two {PUBLIC_GW}"
        )
        # Nothing else of the guest network is reachable from outside.
        assert await asyncio.to_thread(lab.call, lab.outside, "tcp", "10.9.0.12", 22, timeout=1) is None
        # Removed: unreachable at once (tracked connections of the VIP are forgotten too).
        remove = vr.EipRemoveCommand(host_uuid=lab.vr_uuid, uuid=eip.uuid)
        assert (await lab.agents.call(remove, vr.ChangeReply)).changed
        assert await asyncio.to_thread(lab.call, lab.outside, "tcp", "203.0.113.10", 22, timeout=1) is None
        assert await asyncio.to_thread(lab.call, g2, "tcp", PUBLIC_GW, 8080) == f"outside {VR_PUBLIC_IP}"
        assert not (await lab.agents.call(remove, vr.ChangeReply)).changed
        # Moved to another guest (create with the same uuid): the EIP now lands on guest one.
        g1_server = lab.serve(g1, "guest-one", "tcp", 22)
        moved = vr.Eip(uuid=eip.uuid, vip_ip="203.0.113.10", guest_ip="10.9.0.11")  # type: ignore[arg-type]
        create = vr.EipCreateCommand(host_uuid=lab.vr_uuid, eip=moved)
        assert (await lab.agents.call(create, vr.ChangeReply)).changed
        assert not (await lab.agents.call(create, vr.ChangeReply)).changed
        assert (
            await asyncio.to_thread(lab.call, lab.outside, "tcp", "203.0.113.10", 22)
            == f"guest-one {PUBLIC_GW}"
        )
        g1_server.kill()
    finally:
        server.kill()
        guest_server.kill()


async def test_port_forwarding_tcp_and_udp_ranges_with_allowed_cidr(lab):
    g1 = lab.add_guest(G1)
    lab.static_ip(g1, "10.9.0.11/24")
    tcp = vr.PortForwarding(
        uuid=uid(),
        vip_ip="203.0.113.20",
        protocol="TCP",
        vip_port_start=2000,
        vip_port_end=2002,  # type: ignore[arg-type]
        private_port_start=3000,
        private_port_end=3002,
        guest_ip="10.9.0.11",  # type: ignore[arg-type]
        allowed_cidr=f"{PUBLIC_GW}/32",  # type: ignore[arg-type]
    )
    udp = vr.PortForwarding(
        uuid=uid(),
        vip_ip="203.0.113.20",
        protocol="UDP",
        vip_port_start=5000,
        vip_port_end=5001,  # type: ignore[arg-type]
        private_port_start=5000,
        private_port_end=5001,
        guest_ip="10.9.0.11",  # type: ignore[arg-type]
    )
    await sync(lab, base_state(port_forwardings=[tcp, udp]))
    servers = [
        lab.serve(g1, "tcp-guest", "tcp", 3000, 3001, 3002),
        lab.serve(g1, "udp-guest", "udp", 5000, 5001),
    ]
    try:
        for port in (2000, 2001, 2002):  # each VIP port lands on its own private port
            got = await asyncio.to_thread(
                lab.call, lab.outside, "tcp", "203.0.113.20", port, source=PUBLIC_GW
            )
            assert got == f"tcp-guest {PUBLIC_GW}"
        for port in (5000, 5001):
            got = await asyncio.to_thread(
                lab.call, lab.outside, "udp", "203.0.113.20", port, source=OUTSIDE_2
            )
            assert got == f"udp-guest {OUTSIDE_2}"
        # Outside the range, or from a source outside the allowed CIDR: nothing.
        assert await asyncio.to_thread(lab.call, lab.outside, "tcp", "203.0.113.20", 2003, timeout=1) is None
        got = await asyncio.to_thread(
            lab.call, lab.outside, "tcp", "203.0.113.20", 2000, source=OUTSIDE_2, timeout=1
        )
        assert got is None
        remove = vr.PortForwardingRemoveCommand(host_uuid=lab.vr_uuid, uuid=udp.uuid)
        assert (await lab.agents.call(remove, vr.ChangeReply)).counts.port_forwardings == 1
        assert await asyncio.to_thread(lab.call, lab.outside, "udp", "203.0.113.20", 5000, timeout=1) is None
    finally:
        for s in servers:
            s.kill()


def own_rules(text: str) -> list[str]:
    return sorted(line for line in text.splitlines() if line.startswith("-A rs-") or "ringstack" in line)


async def test_full_sync_converges_after_reboot_hand_edits_and_a_killed_agent(lab):
    # Rules and chains not ours, in both tables: never touched.
    def add_foreign() -> None:
        lab.vr.run("iptables", "-t", "nat", "-N", "operator-nat")
        lab.vr.run("iptables", "-t", "nat", "-A", "operator-nat", "-d", "198.51.100.1/32", "-j", "RETURN")
        lab.vr.run("iptables", "-A", "FORWARD", "-s", "198.51.100.7/32", "-j", "ACCEPT")

    add_foreign()
    foreign = [
        line
        for line in lab.save("nat").splitlines() + lab.save("filter").splitlines()
        if "198.51.100" in line
    ]
    eips = [
        vr.Eip(uuid=uid(), vip_ip=f"203.0.113.{100 + i}", guest_ip=f"10.9.0.{100 + i}") for i in range(50)
    ]  # type: ignore[arg-type]
    state = base_state(eips=eips)
    first = await sync(lab, state)
    assert first.changed and first.counts.eips == 50 and first.counts.nat_rules == 50 * 2 + 4 + 1
    wanted = own_rules(lab.save("nat")) + own_rules(lab.save("filter"))
    restores = (await facts(lab)).processes.get("iptables-nft-restore", 0)
    # Idempotent: the same state again changes nothing and restores nothing.
    assert not (await sync(lab, state)).changed
    assert (await facts(lab)).processes.get("iptables-nft-restore", 0) == restores

    # A rule deleted by hand comes back by itself (the reconcile loop runs every second here).
    victim = next(line for line in lab.save("nat").splitlines() if eips[7].uuid in line and "DNAT" in line)
    lab.vr.run("iptables", "-t", "nat", *victim.replace("-A ", "-D ", 1).replace('"', "").split())
    assert victim not in lab.save("nat")
    await until(lambda: victim in lab.save("nat"), 30, "the hand-deleted rule to be repaired")

    # Reboot: every table flushed, our chains gone. A full sync restores exactly the state.
    for table in ("nat", "filter"):
        lab.vr.run("iptables", "-t", table, "-F")
        lab.vr.run("iptables", "-t", table, "-X")
    add_foreign()  # the operator's boot scripts put theirs back
    lab.kill_agent()
    await lab.start_agent()
    assert (await sync(lab, state)).changed
    assert own_rules(lab.save("nat")) + own_rules(lab.save("filter")) == wanted

    # Killed in the middle of a big sync: the next sync converges to exactly its state.
    big = base_state(
        eips=[
            vr.Eip(
                uuid=uid(),
                vip_ip=f"203.0.{113 + i // 250}.{i % 250 + 1}",
                guest_ip=f"10.9.{1 + i // 250}.{i % 250 + 1}",
            )
            for i in range(2000)
        ]
    )  # type: ignore[arg-type]
    call = asyncio.create_task(sync(lab, big))
    await until(lambda: "203.0.113.1/32" in lab.save("nat") or call.done(), 30, "the big sync to start")
    lab.kill_agent()
    await lab.start_agent()
    # The broker hands the unanswered sync to the new agent (or the call times out): either way
    # the next sync is the last word.
    with contextlib.suppress(RingstackError):
        await call
    await sync(lab, state)
    assert own_rules(lab.save("nat")) + own_rules(lab.save("filter")) == wanted
    vips = sorted(a for a in lab.vr.addresses("vpub") if a.endswith("/32"))
    assert vips == sorted(f"{e.vip_ip}/32" for e in eips)
    # ... and the operator's rules are where they were.
    after = [
        line
        for line in lab.save("nat").splitlines() + lab.save("filter").splitlines()
        if "198.51.100" in line
    ]
    assert after == foreign


async def test_bad_input_is_a_structured_error_and_the_agent_lives_on(lab, client):
    queue = client.topology.agent_queue(lab.vr_uuid).name
    bad_bodies = [
        ("vrouter.eip.create", {"eip": {"uuid": uid(), "vipIp": "203.0.113.300", "guestIp": "10.9.0.5"}}),
        (
            "vrouter.eip.create",
            {"eip": {"uuid": "x; rm -rf /", "vipIp": "203.0.113.3", "guestIp": "10.9.0.5"}},
        ),
        (
            "vrouter.pf.create",
            {
                "rule": {
                    "uuid": uid(),
                    "vipIp": "203.0.113.3",
                    "protocol": "ICMP",
                    "vipPortStart": 1,
                    "vipPortEnd": 1,
                    "privatePortStart": 1,
                    "privatePortEnd": 1,
                    "guestIp": "10.9.0.5",
                }
            },
        ),
        (
            "vrouter.pf.create",
            {
                "rule": {
                    "uuid": uid(),
                    "vipIp": "203.0.113.3",
                    "protocol": "TCP",
                    "vipPortStart": 0,
                    "vipPortEnd": 70000,
                    "privatePortStart": 1,
                    "privatePortEnd": 1,
                    "guestIp": "10.9.0.5",
                }
            },
        ),
        ("vrouter.snat.set", {"snat": {"guestCidr": "10.9.0.0/33", "publicIp": VR_PUBLIC_IP}}),
        ("vrouter.dhcp.add", {"entries": [{"mac": "02:00:00:00:00:zz", "ip": "10.9.0.5"}]}),
        ("vrouter.dhcp.add", {"entries": [{"mac": G1, "ip": "10.9.0.5", "hostname": "a b\ndhcp-range=x"}]}),
        ("vrouter.dns.set", {"dns": {"servers": ["8.8.8.8"], "domain": "-bad..domain"}}),
        (
            "vrouter.configure_nics",
            {"nics": [{"mac": G1, "role": "Router", "address": "10.0.0.1/24"}]},
        ),
    ]
    for name, body in bad_bodies:
        with pytest.raises(RingstackError) as err:
            await client.call(
                queue, name, {"hostUuid": lab.vr_uuid, "protocolVersion": 1, **body}, timeout=30
            )
        assert err.value.code == "SYS.INVALID_ARGUMENT", (name, err.value)
    # A VIP serves one service: an EIP on a port-forwarding VIP is a conflict, and nothing changes.
    pf = vr.PortForwarding(
        uuid=uid(),
        vip_ip="203.0.113.30",
        protocol="TCP",
        vip_port_start=80,
        vip_port_end=80,  # type: ignore[arg-type]
        private_port_start=80,
        private_port_end=80,
        guest_ip="10.9.0.11",  # type: ignore[arg-type]
    )
    await lab.agents.call(vr.PortForwardingCreateCommand(host_uuid=lab.vr_uuid, rule=pf), vr.ChangeReply)
    clash = vr.Eip(uuid=uid(), vip_ip="203.0.113.30", guest_ip="10.9.0.12")  # type: ignore[arg-type]
    with pytest.raises(RingstackError) as err:
        await lab.agents.call(vr.EipCreateCommand(host_uuid=lab.vr_uuid, eip=clash), vr.ChangeReply)
    assert err.value.code == vr.VrErrors.CONFLICT
    # A NIC that is not there is named.
    missing = vr.ConfigureNicsCommand(
        host_uuid=lab.vr_uuid,
        nics=[vr.NicConfig(mac="02:00:00:00:ff:ff", role="Guest", address="10.8.0.1/24")],  # type: ignore[arg-type]
    )
    with pytest.raises(RingstackError) as err:
        await lab.agents.call(missing, vr.ChangeReply)
    assert err.value.code == vr.VrErrors.NIC_NOT_FOUND
    # A command of another protocol version is refused before its body is read.
    with pytest.raises(RingstackError) as err:
        await client.call(queue, "vrouter.facts", {"hostUuid": lab.vr_uuid, "protocolVersion": 2}, timeout=30)
    assert err.value.code == "AGENT.PROTOCOL_MISMATCH"
    # Another VR's command is refused, and the agent still answers.
    with pytest.raises(RingstackError) as err:
        await client.call(queue, "agent.ping", {"hostUuid": uid(), "protocolVersion": 1}, timeout=30)
    assert err.value.code == "AGENT.WRONG_HOST"
    done = await lab.agents.call(vr.FactsCommand(host_uuid=lab.vr_uuid), vr.VrFacts)
    assert done.counts.port_forwardings == 1 and done.counts.eips == 0


async def test_concurrent_changes_end_in_exactly_the_desired_state(lab):
    """50 EIP and port-forwarding creates and removes at once on one VR: the agent takes them one
    at a time, and the kernel ends with exactly what the last of each asked for."""
    eips = [vr.Eip(uuid=uid(), vip_ip=f"203.0.113.{50 + i}", guest_ip=f"10.9.0.{50 + i}") for i in range(25)]  # type: ignore[arg-type]
    pfs = [
        vr.PortForwarding(
            uuid=uid(), vip_ip="203.0.113.200", protocol="TCP", vip_port_start=1000 + i, vip_port_end=1000 + i,  # type: ignore[arg-type]
            private_port_start=22, private_port_end=22, guest_ip=f"10.9.0.{50 + i}",  # type: ignore[arg-type]
        )
        for i in range(25)
    ]  # fmt: skip
    await sync(lab, base_state())
    calls = [lab.agents.call(vr.EipCreateCommand(host_uuid=lab.vr_uuid, eip=e), vr.ChangeReply) for e in eips]
    calls += [
        lab.agents.call(vr.PortForwardingCreateCommand(host_uuid=lab.vr_uuid, rule=p), vr.ChangeReply)
        for p in pfs
    ]
    replies = await asyncio.gather(*calls)
    assert all(r.changed for r in replies)
    # Remove every other one, again all at once.
    gone = [vr.EipRemoveCommand(host_uuid=lab.vr_uuid, uuid=e.uuid) for e in eips[::2]]
    gone_pf = [vr.PortForwardingRemoveCommand(host_uuid=lab.vr_uuid, uuid=p.uuid) for p in pfs[::2]]
    await asyncio.gather(*[lab.agents.call(c, vr.ChangeReply) for c in [*gone, *gone_pf]])
    final = await facts(lab)
    assert final.counts.eips == 12 and final.counts.port_forwardings == 12
    nat = lab.save("nat")
    for e in eips:
        assert (e.uuid in nat) == (e not in eips[::2])
    for p in pfs:
        assert (p.uuid in nat) == (p not in pfs[::2])
    # A full sync of what the VR should hold now changes nothing: incremental and full agree.
    expected = base_state(eips=eips[1::2], port_forwardings=pfs[1::2])
    assert not (await sync(lab, expected)).changed


async def test_dns_changes_reach_guests_on_renew_and_queries_go_upstream(lab):
    g1 = lab.add_guest(G1)
    # An upstream DNS server in the outside namespace (the L3's DNS), answering one name.
    server = await asyncio.to_thread(lab.upstream_dns, {"www.outside.example": "198.51.100.80"})
    try:
        await sync(lab, base_state(dns=vr.DnsSettings(servers=[PUBLIC_GW], domain="tenant.example")))  # type: ignore[list-item]
        lease = await asyncio.to_thread(lab.dhcp, g1)
        assert lease["domain"] == "tenant.example"
        out = await asyncio.to_thread(
            await_until_output,
            g1,
            ["busybox", "nslookup", "www.outside.example", "10.9.0.1"],
            "198.51.100.80",
        )
        assert "198.51.100.80" in out
        # The L3's domain changes: the next renew carries it, with no dnsmasq restart.
        before = await facts(lab)
        dns = vr.DnsSetCommand(
            host_uuid=lab.vr_uuid, dns=vr.DnsSettings(servers=[PUBLIC_GW], domain="renamed.example")
        )  # type: ignore[list-item]
        assert (await lab.agents.call(dns, vr.ChangeReply)).changed
        assert (await asyncio.to_thread(lab.dhcp, g1))["domain"] == "renamed.example"
        after = await facts(lab)
        assert after.dnsmasq_pid == before.dnsmasq_pid and after.dnsmasq_restarts == 0
        # Upstream gone from the L3: the VR no longer forwards there.
        none = vr.DnsSetCommand(host_uuid=lab.vr_uuid, dns=vr.DnsSettings(domain="renamed.example"))
        await lab.agents.call(none, vr.ChangeReply)
        done = await asyncio.to_thread(
            g1.run, "busybox", "nslookup", "www.outside.example", "10.9.0.1", check=False
        )
        assert "198.51.100.80" not in done.stdout
    finally:
        server.kill()
        server.wait(10)


def await_until_output(ns, argv: list[str], wanted: str, timeout: float = 10) -> str:
    """Run ``argv`` in ``ns`` until its output holds ``wanted`` (the upstream server may still be
    binding its socket)."""

    def attempt() -> str | None:
        out = ns.run(*argv, check=False).stdout
        return out if wanted in out else None

    return wait_until(attempt, timeout, wanted)
