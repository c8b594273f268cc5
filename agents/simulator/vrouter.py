"""Simulated virtual routers: the VR protocol (``schema.vrouter``) answered from memory.

Each simulated VR keeps its desired state exactly as the real agent does (the same incremental
updates and consistency rules, ``agents.vrouter.agent.updated``/``check_consistent``) and counts
the rules its real twin would hold (``agents.vrouter.rules``), so scale runs of the management
side need no namespaces. Faults are injected per command as for simulated hosts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from agents.simulator.faults import Fault, enter_faults
from agents.vrouter import rules
from agents.vrouter.agent import SyncParts, check_change, updated
from bus.errors import RingstackError
from schema.agent_base import ConnectCommand, ConnectReply, HostFacts, PingCommand, PingReply
from schema.vrouter import (
    ChangeReply,
    ConfigureNicsCommand,
    DhcpAddCommand,
    DhcpRemoveCommand,
    DnsSetCommand,
    EipCreateCommand,
    EipRemoveCommand,
    FactsCommand,
    NicConfig,
    NicFacts,
    PortForwardingCreateCommand,
    PortForwardingRemoveCommand,
    SnatRemoveCommand,
    SnatSetCommand,
    SyncCommand,
    VipCreateCommand,
    VipRemoveCommand,
    VirtualRouterAgent,
    VrCommand,
    VrCounts,
    VrErrors,
    VrFacts,
    VrState,
)

AGENT_VERSION = "ringstack-vrouter-simulator/1"


@dataclass
class SimVrouter(VirtualRouterAgent):
    host_uuid: str
    state: VrState = field(default_factory=VrState)
    nics: dict[str, NicConfig] = field(default_factory=dict)
    faults: dict[str, Fault] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    renderer: rules.Renderer = field(default_factory=rules.Renderer)
    sync_parts: SyncParts = field(default_factory=SyncParts)

    async def _enter(self, command: str) -> None:
        await enter_faults(self, command)

    def counts(self) -> VrCounts:
        roles = [n.role for n in self.nics.values()]
        nics = rules.Interfaces(
            public="pub" if "Public" in roles else None,
            management="mgmt" if "Management" in roles else None,
            guests=tuple(f"g{i}" for i, role in enumerate(roles) if role == "Guest"),
        )
        try:
            desired = self.renderer.render(self.state, nics)
        except rules.NotConfigured:
            desired = {}
        s = self.state
        return VrCounts(
            snats=len(s.snats),
            vips=len(s.vips),
            eips=len(s.eips),
            port_forwardings=len(s.port_forwardings),
            dhcp_entries=len(s.dhcp),
            nat_rules=rules.count_rules(desired, "nat"),
            filter_rules=rules.count_rules(desired, "filter"),
        )

    def facts_now(self) -> VrFacts:
        return VrFacts(
            agent_version=AGENT_VERSION,
            firewall="simulator",
            nics=[
                NicFacts(name=f"eth{i}", mac=n.mac, addresses=[str(n.address)], role=n.role)
                for i, n in enumerate(self.nics.values())
            ],
            counts=self.counts(),
        )

    def _set(self, new: VrState, started: float) -> ChangeReply:
        if (new.eips or new.snats) and not any(n.role == "Public" for n in self.nics.values()):
            raise RingstackError(
                VrErrors.NOT_CONFIGURED, "EIPs and SNAT need the public NIC configured first"
            )
        changed = new != self.state
        self.state = new
        return ChangeReply(changed=changed, counts=self.counts(), duration=time.monotonic() - started)

    async def _change(self, op: str, cmd: VrCommand) -> ChangeReply:
        await self._enter(f"vrouter.{op}")
        started = time.monotonic()
        try:
            check_change(self.state, op, cmd)
        except ValueError as exc:
            raise RingstackError(
                VrErrors.CONFLICT, f"the change conflicts with the VR's state: {exc}"
            ) from None
        return self._set(updated(self.state, op, cmd), started)

    # ------------------------------------------------------------------ the protocol

    async def connect(self, cmd: ConnectCommand) -> ConnectReply:
        await self._enter("agent.connect")
        facts = HostFacts(
            hypervisor="vrouter", cpu_num=1, memory_size=256 << 20, hostname=f"vr-{self.host_uuid[:8]}"
        )
        return ConnectReply(host_uuid=self.host_uuid, agent_version=AGENT_VERSION, facts=facts)

    async def ping(self, cmd: PingCommand) -> PingReply:
        await self._enter("agent.ping")
        return PingReply(
            host_uuid=self.host_uuid, agent_version=AGENT_VERSION, uptime=time.monotonic() - self.started
        )

    async def facts(self, cmd: FactsCommand) -> VrFacts:
        await self._enter("vrouter.facts")
        return self.facts_now()

    async def configure_nics(self, cmd: ConfigureNicsCommand) -> ChangeReply:
        await self._enter("vrouter.configure_nics")
        started = time.monotonic()
        before = dict(self.nics)
        self.nics.update({n.mac: n for n in cmd.nics})
        reply = self._set(self.state, started)
        return reply.model_copy(update={"changed": before != self.nics})

    async def sync(self, cmd: SyncCommand) -> ChangeReply:
        await self._enter("vrouter.sync")
        started = time.monotonic()
        state = self.sync_parts.take(cmd)
        if state is None:
            return ChangeReply(changed=False, complete=False, counts=self.counts())
        return self._set(state, started)

    async def snat_set(self, cmd: SnatSetCommand) -> ChangeReply:
        return await self._change("snat.set", cmd)

    async def snat_remove(self, cmd: SnatRemoveCommand) -> ChangeReply:
        return await self._change("snat.remove", cmd)

    async def vip_create(self, cmd: VipCreateCommand) -> ChangeReply:
        return await self._change("vip.create", cmd)

    async def vip_remove(self, cmd: VipRemoveCommand) -> ChangeReply:
        return await self._change("vip.remove", cmd)

    async def eip_create(self, cmd: EipCreateCommand) -> ChangeReply:
        return await self._change("eip.create", cmd)

    async def eip_remove(self, cmd: EipRemoveCommand) -> ChangeReply:
        return await self._change("eip.remove", cmd)

    async def pf_create(self, cmd: PortForwardingCreateCommand) -> ChangeReply:
        return await self._change("pf.create", cmd)

    async def pf_remove(self, cmd: PortForwardingRemoveCommand) -> ChangeReply:
        return await self._change("pf.remove", cmd)

    async def dhcp_add(self, cmd: DhcpAddCommand) -> ChangeReply:
        return await self._change("dhcp.add", cmd)

    async def dhcp_remove(self, cmd: DhcpRemoveCommand) -> ChangeReply:
        return await self._change("dhcp.remove", cmd)

    async def dns_set(self, cmd: DnsSetCommand) -> ChangeReply:
        return await self._change("dns.set", cmd)
