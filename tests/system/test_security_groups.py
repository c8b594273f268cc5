"""Security groups on a KVM agent, proven with real packets (tempest's
``test_security_groups_basic_ops``, translated).

A host is a network namespace (``HostNetwork``); the KVM agent runs in-process on the real broker
with its ``ip``/``iptables``/``ipset``/``ebtables`` commands inside that namespace, so the machine's
own tables are never touched. Guests are namespaces whose veth is named as the VM's tap would be
(``vnic_name``) and plugged into the bridge the agent itself made.
"""

from __future__ import annotations

import select
import subprocess
import uuid as uuidlib
from dataclasses import dataclass

import pytest

from agents.kvm.config import AgentConfig
from agents.kvm.secgroup import vnic_name
from schema.agent import (
    ApplySecurityGroupRulesCommand,
    BridgeReply,
    EnsureBridgeCommand,
    SecurityGroupReply,
    SecurityGroupRuleSpec,
    SecurityGroupSpec,
    UpdateSecurityGroupMembersCommand,
    VmNicSecuritySpec,
)
from tests.system.kvmsupport import (
    HostNetwork,
    InProcessAgent,
    Netns,
    delete_agent_queues,
    l2,
    libvirt_test_uri,
)

SUBNET = "169.254.10"


@dataclass
class Guest:
    ns: Netns
    nic_uuid: str
    mac: str
    ip: str

    def spec(self, *groups: str) -> VmNicSecuritySpec:
        return VmNicSecuritySpec(
            nic_uuid=self.nic_uuid, mac=self.mac, ips=[self.ip], security_group_uuids=list(groups)
        )


class Host:
    def __init__(self, net: HostNetwork, agent: InProcessAgent, bridge: str) -> None:
        self.net, self.agent, self.bridge = net, agent, bridge
        self.guests: list[Guest] = []

    def guest(self) -> Guest:
        index = len(self.guests) + 11
        ns = Netns("rskg")
        self.net.extra.append(ns)
        nic_uuid = uuidlib.uuid4().hex
        mac = f"fa:16:3e:00:00:{index:02x}"
        dev = vnic_name(nic_uuid)
        self.net.host.ip("link", "add", dev, "type", "veth", "peer", "name", "eth0", "netns", ns.name)
        self.net.host.ip("link", "set", dev, "master", self.bridge)
        self.net.host.ip("link", "set", dev, "up")
        ns.ip("link", "set", "eth0", "address", mac)
        ns.ip("addr", "add", f"{SUBNET}.{index}/24", "dev", "eth0")
        ns.ip("link", "set", "eth0", "up")
        g = Guest(ns, nic_uuid, mac, f"{SUBNET}.{index}")
        self.guests.append(g)
        return g

    async def apply(self, nics, groups, members=None) -> SecurityGroupReply:
        cmd = ApplySecurityGroupRulesCommand(
            host_uuid=self.agent.host_uuid, nics=nics, groups=groups, members=members or {}
        )
        return await self.agent.client.call(cmd, SecurityGroupReply)

    def run(self, *argv: str) -> str:
        return self.net.host.run(*argv).stdout


def pings(src: Guest, dst: Guest) -> bool:
    return src.ns.run("busybox", "ping", "-c", "1", "-W", "1", dst.ip, check=False).returncode == 0


def rule(kind: str, protocol: str, **kw) -> SecurityGroupRuleSpec:
    return SecurityGroupRuleSpec(type=kind, protocol=protocol, **kw)


def group(*rules: SecurityGroupRuleSpec, uuid: str | None = None) -> SecurityGroupSpec:
    return SecurityGroupSpec(uuid=uuid or uuidlib.uuid4().hex, rules=list(rules))


class Listener:
    """``nc -l`` in a guest; ``received`` waits for a line (bounded: absence needs a deadline)."""

    def __init__(self, guest: Guest, port: int, udp: bool = False) -> None:
        argv = ["ip", "netns", "exec", guest.ns.name, "nc", "-n", "-l"]
        if udp:
            argv.append("-u")
        argv += [guest.ip, str(port)]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        # nc is listening once its socket shows in the namespace
        probe = ["ss", "-H", "-n", "-l", "-u" if udp else "-t", f"sport = :{port}"]
        for _ in range(500):
            if guest.ns.run(*probe, check=False).stdout.strip():
                break
            select.select([], [], [], 0.02)
        else:
            raise AssertionError(f"nc did not listen on {port}")

    def received(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        return self.proc.stdout.readline().decode() if ready else ""

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def send(src: Guest, dst: Guest, port: int, data: str, udp: bool = False, source: str | None = None) -> int:
    argv = ["nc", "-n", "-w", "1"]
    if udp:
        argv.append("-u")
    if source:
        argv += ["-s", source]
    argv += [dst.ip, str(port)]
    done = subprocess.run(
        ["ip", "netns", "exec", src.ns.name, *argv],
        check=False,
        input=data.encode(),
        capture_output=True,
        timeout=30,
    )
    return done.returncode


def connect(src: Guest, dst: Guest, port: int) -> subprocess.Popen[bytes]:
    """A TCP connection kept open: write to its stdin to send."""
    argv = ["ip", "netns", "exec", src.ns.name, "nc", "-n", dst.ip, str(port)]
    return subprocess.Popen(argv, stdin=subprocess.PIPE)


@pytest.fixture
def hostnet():
    net = HostNetwork.create()
    try:
        yield net
    finally:
        net.close()


def agent_config(tmp_path, broker_url, namespace, netns, host_uuid) -> AgentConfig:
    return AgentConfig(
        host_uuid=host_uuid,
        broker_url=broker_url,
        namespace=namespace,
        libvirt_uri=libvirt_test_uri(tmp_path),
        domain_type="qemu",
        mount_dir=str(tmp_path / "mounts"),
        netns=netns,
    )


@pytest.fixture
async def host(tmp_path, client, broker_url, namespace, hostnet):
    config = agent_config(tmp_path, broker_url, namespace, hostnet.host.name, uuidlib.uuid4().hex)
    agent = await InProcessAgent.start(config, client)
    bridge = f"br{uuidlib.uuid4().hex[:8]}"
    h = Host(hostnet, agent, bridge)
    try:
        await agent.client.call(EnsureBridgeCommand(host_uuid=config.host_uuid, l2=l2(bridge)), BridgeReply)
        yield h
    finally:
        await h.agent.close()
        delete_agent_queues(namespace, config.host_uuid)


async def test_in_tenant_traffic_blocked_until_the_group_allows_itself(host):
    g1, g2 = host.guest(), host.guest()
    assert pings(g1, g2)  # no group yet: an open bridge
    tenant = group()
    reply = await host.apply([g1.spec(tenant.uuid), g2.spec(tenant.uuid)], [tenant])
    assert reply.changed and reply.restores == 2  # one iptables-restore, one ebtables-restore
    assert not pings(g1, g2) and not pings(g2, g1)

    tenant = group(rule("Ingress", "ICMP", remote_security_group_uuid=tenant.uuid), uuid=tenant.uuid)
    members = {tenant.uuid: [g1.ip, g2.ip]}
    reply = await host.apply([g1.spec(tenant.uuid), g2.spec(tenant.uuid)], [tenant], members)
    assert reply.changed and reply.set_members_changed == 2
    assert pings(g1, g2) and pings(g2, g1)

    # The same state again changes nothing at all.
    again = await host.apply([g1.spec(tenant.uuid), g2.spec(tenant.uuid)], [tenant], members)
    assert (again.changed, again.rules_changed, again.restores) == (False, 0, 0)

    # A member leaving is a set change, not a rule change.
    reply = await host.agent.client.call(
        UpdateSecurityGroupMembersCommand(host_uuid=host.agent.host_uuid, members={tenant.uuid: [g2.ip]}),
        SecurityGroupReply,
    )
    assert (reply.changed, reply.rules_changed, reply.set_members_changed) == (True, 0, 1)
    assert not pings(g1, g2)  # g1 is no longer a member g2 accepts
    assert pings(g2, g1)


async def test_cross_tenant_rule_on_the_destination_opens_that_direction_only(host):
    g1, g2 = host.guest(), host.guest()
    a, b = group(), group()
    await host.apply([g1.spec(a.uuid), g2.spec(b.uuid)], [a, b])
    assert not pings(g1, g2) and not pings(g2, g1)

    b = group(rule("Ingress", "ICMP", remote_security_group_uuid=a.uuid), uuid=b.uuid)
    await host.apply([g1.spec(a.uuid), g2.spec(b.uuid)], [a, b], {a.uuid: [g1.ip]})
    assert pings(g1, g2)
    assert not pings(g2, g1)

    # The source tenant adds its own rule (by CIDR): now both ways.
    a = group(rule("Ingress", "ICMP", allowed_cidr=f"{g2.ip}/32"), uuid=a.uuid)
    await host.apply([g1.spec(a.uuid), g2.spec(b.uuid)], [a, b], {a.uuid: [g1.ip]})
    assert pings(g2, g1) and pings(g1, g2)


async def test_replacing_a_nics_groups_with_one_allowing_icmp_opens_it(host):
    g1, g2 = host.guest(), host.guest()
    closed, open_ = group(), group(rule("Ingress", "ICMP"))
    await host.apply([g1.spec(closed.uuid), g2.spec(closed.uuid)], [closed, open_])
    assert not pings(g1, g2)
    await host.apply([g1.spec(closed.uuid), g2.spec(open_.uuid)], [closed, open_])
    assert pings(g1, g2)
    assert not pings(g2, g1)


async def test_tcp_and_udp_port_rules_with_nc(host):
    g1, g2 = host.guest(), host.guest()
    client, server = (
        group(),
        group(
            rule("Ingress", "TCP", start_port=5000, end_port=5001, allowed_cidr=f"{SUBNET}.0/24"),
            rule("Ingress", "UDP", start_port=5353, end_port=5353),
        ),
    )
    await host.apply([g1.spec(client.uuid), g2.spec(server.uuid)], [client, server])

    tcp_ok = Listener(g2, 5001)
    tcp_shut = Listener(g2, 5002)
    udp_ok = Listener(g2, 5353, udp=True)
    udp_shut = Listener(g2, 5354, udp=True)
    try:
        assert send(g1, g2, 5001, "tcp-allowed\n") == 0
        assert tcp_ok.received(10) == "tcp-allowed\n"
        assert send(g1, g2, 5002, "tcp-denied\n") != 0  # the SYN is dropped: no connection
        assert tcp_shut.received(0.5) == ""
        send(g1, g2, 5354, "udp-denied\n", udp=True)
        send(g1, g2, 5353, "udp-allowed\n", udp=True)
        assert udp_ok.received(10) == "udp-allowed\n"
        assert udp_shut.received(1) == ""
        assert not pings(g1, g2)  # no ICMP rule
    finally:
        for listener in (tcp_ok, tcp_shut, udp_ok, udp_shut):
            listener.close()


async def test_a_guest_spoofing_its_mac_or_ip_is_dropped(host):
    g1, g2 = host.guest(), host.guest()
    anyone = group(rule("Ingress", "ALL"))
    await host.apply([g1.spec(anyone.uuid), g2.spec(anyone.uuid)], [anyone])
    assert pings(g1, g2)
    g2_mac = g2.ns.ip("link", "show", "eth0").stdout.split("link/ether ")[1].split()[0]
    g1.ns.ip("neigh", "replace", g2.ip, "lladdr", g2_mac, "dev", "eth0", "nud", "permanent")

    # Another source IP (no ARP needed: g2's MAC is known): the datagram never reaches g2.
    g1.ns.ip("addr", "add", f"{SUBNET}.99/24", "dev", "eth0")
    listener = Listener(g2, 6000, udp=True)
    try:
        send(g1, g2, 6000, "spoofed-ip\n", udp=True, source=f"{SUBNET}.99")
        send(g1, g2, 6000, "honest\n", udp=True, source=g1.ip)
        assert listener.received(10) == "honest\n"
    finally:
        listener.close()

    # Another source MAC: dropped at the bridge port (ebtables).
    g1.ns.ip("link", "set", "eth0", "address", "fa:16:3e:00:00:99")
    listener = Listener(g2, 6001, udp=True)
    try:
        send(g1, g2, 6001, "spoofed-mac\n", udp=True, source=g1.ip)
        assert listener.received(1) == ""
    finally:
        listener.close()
    g1.ns.ip("link", "set", "eth0", "address", g1.mac)
    assert pings(g1, g2)


async def test_foreign_rules_sets_and_chains_are_never_touched(host):
    run = host.net.host.run
    run("iptables", "-N", "operator-chain")
    run("iptables", "-A", "operator-chain", "-s", "10.9.9.9", "-j", "DROP")
    run("iptables", "-A", "FORWARD", "-s", "10.8.8.8", "-j", "ACCEPT")
    run("ebtables", "-A", "FORWARD", "-s", "02:00:00:00:00:01", "-j", "DROP")
    run("ipset", "create", "operator-set", "hash:ip")
    run("ipset", "add", "operator-set", "10.7.7.7")

    def foreign() -> tuple[list[str], list[str], str]:
        ipt = [
            line
            for line in run("iptables-save", "-t", "filter").stdout.splitlines()
            if not line.startswith("#") and "rs-" not in line
        ]
        eb = [
            line
            for line in run("ebtables-save").stdout.splitlines()
            if not line.startswith("#") and "rs-" not in line
        ]
        return ipt, eb, run("ipset", "list", "operator-set").stdout

    before = foreign()
    g1, g2 = host.guest(), host.guest()
    a = group(rule("Ingress", "ICMP", remote_security_group_uuid=uuidlib.uuid4().hex))
    await host.apply([g1.spec(a.uuid), g2.spec(a.uuid)], [a])
    assert foreign() == before
    save = run("iptables-save", "-t", "filter").stdout
    forward = [line for line in save.splitlines() if line.startswith("-A FORWARD")]
    assert "rs-sg" in forward[0]  # our one hook rule first, theirs after it
    assert forward[1:] == ["-A FORWARD -s 10.8.8.8/32 -j ACCEPT"]

    reply = await host.apply([], [])  # nothing in a group any more: everything of ours goes
    assert reply.changed
    assert foreign() == before
    assert "rs-" not in run("iptables-save", "-t", "filter").stdout
    assert "rs-" not in run("ebtables-save").stdout
    assert "rs-" not in run("ipset", "list", "-n").stdout


async def test_agent_restart_keeps_established_flows_and_reconverges(
    tmp_path, client, broker_url, namespace, host
):
    g1, g2 = host.guest(), host.guest()
    a = group()
    b = group(rule("Ingress", "TCP", start_port=7000, end_port=7000, remote_security_group_uuid=a.uuid))
    state = ([g1.spec(a.uuid), g2.spec(b.uuid)], [a, b], {a.uuid: [g1.ip]})
    await host.apply(*state)

    server = Listener(g2, 7000)
    flow = connect(g1, g2, 7000)
    try:
        assert flow.stdin is not None
        flow.stdin.write(b"before\n")
        flow.stdin.flush()
        assert server.received(10) == "before\n"

        # The agent goes away; meanwhile someone flushes one of our chains.
        config = host.agent.agent.config
        await host.agent.close()
        chain = f"rs-i-{g2.nic_uuid[:16]}"
        host.net.host.run("iptables", "-F", chain)

        host.agent = await InProcessAgent.start(config, client)
        reply = await host.apply(*state)  # what the management node's full sync sends
        assert reply.changed and reply.restores == 1  # only iptables differed
        again = await host.apply(*state)
        assert not again.changed

        flow.stdin.write(b"after\n")
        flow.stdin.flush()
        assert server.received(10) == "after\n"
        assert flow.poll() is None
        # New flows are still judged: no ICMP rule.
        assert not pings(g1, g2)
    finally:
        flow.kill()
        flow.wait()
        server.close()


async def test_egress_rules_limit_what_a_guest_may_send(host):
    g1, g2 = host.guest(), host.guest()
    open_in = group(rule("Ingress", "ALL"))
    assert pings(g1, g2)
    limited = group(rule("Ingress", "ALL"), rule("Egress", "TCP", start_port=7001, end_port=7001))
    await host.apply([g1.spec(limited.uuid), g2.spec(open_in.uuid)], [limited, open_in])
    allowed, denied = Listener(g2, 7001), Listener(g2, 7002)
    try:
        assert send(g1, g2, 7001, "egress-allowed\n") == 0
        assert allowed.received(10) == "egress-allowed\n"
        assert send(g1, g2, 7002, "egress-denied\n") != 0
        assert denied.received(0.5) == ""
        assert not pings(g1, g2)  # ICMP out is not allowed either
        assert pings(g2, g1)  # egress is about what g1 sends; replies to g2's pings are established
    finally:
        allowed.close()
        denied.close()
