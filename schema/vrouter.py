"""The virtual-router agent protocol, version 1: every command, its reply, the desired-state model.

Spoken between management nodes and the agent inside each virtual-router (VR) appliance VM (and
the simulator). Transport and conventions are those of every agent (``schema.agent_base``):

- a ringstack envelope of kind ``call`` on the VR's own queue ``<ns>.agent.<vr_uuid>``; replies
  through ``<ns>.replies``. Every command carries ``hostUuid``: the VR's uuid (the VR is tracked
  like a host, and the shared agent server refuses a command meant for another one with
  ``AGENT.WRONG_HOST``);
- every command and reply carries the protocol version (``AGENT.PROTOCOL_MISMATCH`` otherwise);
  ``agent.connect`` and ``agent.ping`` are the shared ones; ``VirtualRouterAgent`` at the end is
  the protocol as a typed interface;
- every mutating command is idempotent and its reply says whether it ``changed`` anything;
- ``vrouter.sync`` carries the whole desired state: afterwards the VR holds exactly that (every
  SNAT, VIP, EIP, port forwarding, DHCP entry and DNS setting) and nothing else of ringstack's.
  Rules ringstack does not own (chains not named ``rs-*``) are never touched.

Every field that reaches a command line (addresses, CIDRs, ports, protocols, MACs, host names,
uuids used in rule comments) is validated here, so a bad value is ``SYS.INVALID_ARGUMENT`` naming
the field, before the agent runs anything. Cross-field rules (one service per VIP, no two DHCP
entries with one MAC or IP, port ranges of equal length) are checked here too.
"""

from __future__ import annotations

import itertools
from abc import abstractmethod
from collections.abc import Callable, Hashable, Sequence
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, model_validator

from schema.agent_base import AgentInterface, AgentReply, HostCommand, command, commands_of
from schema.api.base import UUID_PATTERN, WireModel

PROTOCOL_VERSION = 1

Uuid = Annotated[str, Field(pattern=UUID_PATTERN)]
Mac = Annotated[str, Field(pattern=r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$")]
Port = Annotated[int, Field(ge=1, le=65535)]
# RFC 1123 labels; dnsmasq and the DHCP client see them verbatim.
Hostname = Annotated[str, Field(pattern=r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")]
Domain = Annotated[
    str,
    Field(
        max_length=253,
        pattern=r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$",
    ),
]
NicRole = Literal["Management", "Public", "Guest"]
Protocol = Literal["TCP", "UDP"]


class VrErrors:
    NIC_NOT_FOUND = "VROUTER.NIC_NOT_FOUND"  # no interface with that MAC in the VR
    NOT_CONFIGURED = "VROUTER.NOT_CONFIGURED"  # a service names a NIC role not configured yet
    APPLY_FAILED = "VROUTER.APPLY_FAILED"  # iptables-restore, ip or dnsmasq refused; message says why
    CONFLICT = "VROUTER.CONFLICT"  # e.g. a VIP already used by another service


# ---------------------------------------------------------------------- NICs


class NicConfig(WireModel):
    mac: Mac
    role: NicRole
    address: IPv4Interface  # the NIC's IP with its prefix, e.g. 10.0.0.1/24 (the guest gateway)
    gateway: IPv4Address | None = None  # on the public NIC: the VR's default route

    @model_validator(mode="after")
    def _gateway_in_subnet(self) -> NicConfig:
        if self.gateway is not None and self.gateway not in self.address.network:
            raise ValueError(f"gateway {self.gateway} is outside {self.address.network}")
        return self


# ---------------------------------------------------------------------- services


class Snat(WireModel):
    """Guests of ``guestCidr`` leave through the public NIC as ``publicIp``."""

    guest_cidr: IPv4Network
    public_ip: IPv4Address


class Vip(WireModel):
    """An address the VR answers for on the public NIC (EIPs and port forwardings use one)."""

    ip: IPv4Address


class Eip(WireModel):
    uuid: Uuid
    vip_ip: IPv4Address
    guest_ip: IPv4Address


class PortForwarding(WireModel):
    uuid: Uuid
    vip_ip: IPv4Address
    protocol: Protocol
    vip_port_start: Port
    vip_port_end: Port
    private_port_start: Port
    private_port_end: Port
    guest_ip: IPv4Address
    allowed_cidr: IPv4Network = IPv4Network("0.0.0.0/0")

    @model_validator(mode="after")
    def _ranges(self) -> PortForwarding:
        if self.vip_port_end < self.vip_port_start or self.private_port_end < self.private_port_start:
            raise ValueError("a port range ends before it starts")
        if self.vip_port_end - self.vip_port_start != self.private_port_end - self.private_port_start:
            raise ValueError("the VIP and private port ranges differ in length")
        return self


class DhcpEntry(WireModel):
    mac: Mac
    ip: IPv4Address
    hostname: Hostname | None = None
    # False: the guest's other NICs' network; it gets an address but no router and no DNS.
    default_route: bool = True


class DnsSettings(WireModel):
    """What guests are told: their DNS server is the VR (which forwards to ``servers``), their
    search domain is ``domain``."""

    servers: list[IPv4Address] = Field(default_factory=list, max_length=8)
    domain: Domain | None = None


class VrState(WireModel):
    """Everything ringstack wants on one VR's data plane."""

    snats: list[Snat] = Field(default_factory=list)
    vips: list[Vip] = Field(default_factory=list)
    eips: list[Eip] = Field(default_factory=list)
    port_forwardings: list[PortForwarding] = Field(default_factory=list)
    dhcp: list[DhcpEntry] = Field(default_factory=list)
    dns: DnsSettings = Field(default_factory=DnsSettings)

    @model_validator(mode="after")
    def _consistent(self) -> VrState:
        check_consistent(self)
        return self


def check_consistent(state: VrState) -> None:
    """The cross-entry rules a state must keep (raised as ValueError: an invalid argument).
    Compares addresses as integers: it runs on every change of a VR with 10,000s of entries, and
    hashing or formatting ``IPv4Address`` objects is slow."""
    _unique("EIP uuid", [e.uuid for e in state.eips])
    _unique("port forwarding uuid", [p.uuid for p in state.port_forwardings])
    _unique("VIP", [int(v.ip) for v in state.vips], IPv4Address)
    _unique("SNAT guest CIDR", [str(s.guest_cidr) for s in state.snats])
    _unique("DHCP MAC", [d.mac for d in state.dhcp])
    _unique("DHCP IP", [int(d.ip) for d in state.dhcp], IPv4Address)
    # A VIP serves one EIP, or port forwardings, never both (ZStack: one service per VIP).
    eip_vips = [int(e.vip_ip) for e in state.eips]
    _unique("EIP VIP", eip_vips, IPv4Address)
    both = {int(p.vip_ip) for p in state.port_forwardings}.intersection(eip_vips)
    if both:
        raise ValueError(f"VIP {IPv4Address(min(both))} is used by an EIP and by port forwarding")
    # Two forwardings of one VIP and protocol must not overlap: each packet has one destination.
    spans: dict[tuple[int, str], list[tuple[int, int, str]]] = {}
    for p in state.port_forwardings:
        spans.setdefault((int(p.vip_ip), p.protocol), []).append((p.vip_port_start, p.vip_port_end, p.uuid))
    for (vip, proto), ranges in spans.items():
        if len(ranges) < 2:
            continue
        ranges.sort()
        for (_, end, first), (start, _, second) in itertools.pairwise(ranges):
            if start <= end:
                raise ValueError(
                    f"port forwardings {first} and {second} overlap on {IPv4Address(vip)} {proto}"
                )


def _unique(what: str, values: Sequence[Hashable], show: Callable[[Any], object] = str) -> None:
    seen: set[Hashable] = set()
    for v in values:
        if v in seen:
            raise ValueError(f"duplicate {what} {show(v)}")
        seen.add(v)


# ---------------------------------------------------------------------- commands


class VrCommand(HostCommand):
    """``hostUuid`` is the VR's uuid: the agent's identity on the bus."""


class NicFacts(WireModel):
    name: str
    mac: str
    addresses: list[str]  # but the VIPs' /32s: a public NIC may hold 10,000s, counted in ``vips``
    vips: int = 0
    role: NicRole | None = None


class VrCounts(WireModel):
    """What the VR holds now, counted from its desired state (the simulator keeps the same)."""

    snats: int = 0
    vips: int = 0
    eips: int = 0
    port_forwardings: int = 0
    dhcp_entries: int = 0
    nat_rules: int = 0
    filter_rules: int = 0


class VrFacts(AgentReply):
    agent_version: str
    firewall: Literal["iptables-nft", "iptables-legacy", "simulator"]
    dnsmasq_pid: int | None = None
    dnsmasq_restarts: int = 0  # since the agent started; entries change by SIGHUP, not restarts
    dnsmasq_reloads: int = 0
    # processes the agent spawned since it started, per program (one iptables-restore per table
    # and change, never one iptables per rule)
    processes: dict[str, int] = Field(default_factory=dict)
    nics: list[NicFacts] = Field(default_factory=list)
    counts: VrCounts = Field(default_factory=VrCounts)


class FactsCommand(VrCommand):
    pass


class ConfigureNicsCommand(VrCommand):
    """Set each NIC (found by MAC) up with its address; the public NIC's gateway becomes the
    default route. NICs not named are left as they are."""

    nics: list[NicConfig] = Field(min_length=1, max_length=64)

    @model_validator(mode="after")
    def _roles(self) -> ConfigureNicsCommand:
        _unique("NIC MAC", [n.mac for n in self.nics])
        for role in ("Management", "Public"):
            if sum(n.role == role for n in self.nics) > 1:
                raise ValueError(f"more than one {role} NIC")
        return self


class SyncCommand(VrCommand):
    """The whole desired state, in one message or (a big VR: a bus message is at most 1 MiB,
    and 15,000 entries take about 2) in ``parts`` messages sharing a ``syncId``. The agent applies
    nothing until it holds every part; a part of a sync it no longer holds (it restarted) leaves
    that sync incomplete, and the sender starts again. ``split_state`` cuts a state into parts."""

    state: VrState
    sync_id: Uuid | None = None
    part: int = Field(default=0, ge=0)
    parts: int = Field(default=1, ge=1, le=1000)

    @model_validator(mode="after")
    def _part(self) -> SyncCommand:
        if self.part >= self.parts:
            raise ValueError(f"part {self.part} of {self.parts}")
        if self.parts > 1 and self.sync_id is None:
            raise ValueError("a sync in parts needs a syncId")
        return self


SYNC_PART_ITEMS = 2000  # entries per part: each part stays well under the bus's 1 MiB


def split_state(state: VrState, items: int = SYNC_PART_ITEMS) -> list[VrState]:
    """``state`` cut into parts of at most ``items`` entries; the DNS settings ride in the first."""
    entries: list[tuple[str, object]] = [
        (name, item)
        for name in ("snats", "vips", "eips", "port_forwardings", "dhcp")
        for item in getattr(state, name)
    ]
    parts: list[VrState] = []
    for start in range(0, max(len(entries), 1), items):
        fields: dict[str, list[object]] = {
            "snats": [],
            "vips": [],
            "eips": [],
            "port_forwardings": [],
            "dhcp": [],
        }
        for name, item in entries[start : start + items]:
            fields[name].append(item)
        part = VrState.model_construct(**fields, dns=state.dns if not parts else DnsSettings())  # type: ignore[arg-type]
        parts.append(part)
    return parts


def join_states(parts: list[VrState]) -> VrState:
    """The parts of a sync put back together (checked across parts by the caller)."""
    return VrState.model_construct(
        snats=[x for p in parts for x in p.snats],
        vips=[x for p in parts for x in p.vips],
        eips=[x for p in parts for x in p.eips],
        port_forwardings=[x for p in parts for x in p.port_forwardings],
        dhcp=[x for p in parts for x in p.dhcp],
        dns=parts[0].dns,
    )


class SnatSetCommand(VrCommand):
    snat: Snat  # replaces the SNAT of the same guest CIDR


class SnatRemoveCommand(VrCommand):
    guest_cidr: IPv4Network


class VipCreateCommand(VrCommand):
    vip: Vip


class VipRemoveCommand(VrCommand):
    ip: IPv4Address


class EipCreateCommand(VrCommand):
    eip: Eip  # replaces the EIP of the same uuid (a move to another guest, or VIP)


class EipRemoveCommand(VrCommand):
    uuid: Uuid


class PortForwardingCreateCommand(VrCommand):
    rule: PortForwarding  # replaces the rule of the same uuid


class PortForwardingRemoveCommand(VrCommand):
    uuid: Uuid


class DhcpAddCommand(VrCommand):
    entries: list[DhcpEntry] = Field(min_length=1)  # replace the entries of the same MACs


class DhcpRemoveCommand(VrCommand):
    macs: list[Mac] = Field(min_length=1)


class DnsSetCommand(VrCommand):
    dns: DnsSettings


class ChangeReply(AgentReply):
    # False: a part of a sync was taken and the rest is awaited; nothing was applied yet.
    complete: bool = True
    counts: VrCounts
    duration: float = Field(default=0.0, ge=0, description="seconds the agent spent applying")


class VirtualRouterAgent(AgentInterface):
    """The virtual-router protocol as a typed interface (``schema.agent_base``): connect and ping
    are inherited (``agent.connect`` answers host facts with ``hypervisor: vrouter``); the VR's own
    facts (NICs, rule and entry counts, dnsmasq) are ``vrouter.facts``. The agent in the appliance
    (``agents.vrouter``) and the simulator's VRs subclass it."""

    PROTOCOL: ClassVar[str] = "vrouter"
    VERSION: ClassVar[int] = PROTOCOL_VERSION

    @command("vrouter.facts", mutating=False)
    @abstractmethod
    async def facts(self, cmd: FactsCommand) -> VrFacts: ...

    @command("vrouter.configure_nics")
    @abstractmethod
    async def configure_nics(self, cmd: ConfigureNicsCommand) -> ChangeReply: ...

    @command("vrouter.sync")
    @abstractmethod
    async def sync(self, cmd: SyncCommand) -> ChangeReply: ...

    @command("vrouter.snat.set")
    @abstractmethod
    async def snat_set(self, cmd: SnatSetCommand) -> ChangeReply: ...

    @command("vrouter.snat.remove")
    @abstractmethod
    async def snat_remove(self, cmd: SnatRemoveCommand) -> ChangeReply: ...

    @command("vrouter.vip.create")
    @abstractmethod
    async def vip_create(self, cmd: VipCreateCommand) -> ChangeReply: ...

    @command("vrouter.vip.remove")
    @abstractmethod
    async def vip_remove(self, cmd: VipRemoveCommand) -> ChangeReply: ...

    @command("vrouter.eip.create")
    @abstractmethod
    async def eip_create(self, cmd: EipCreateCommand) -> ChangeReply: ...

    @command("vrouter.eip.remove")
    @abstractmethod
    async def eip_remove(self, cmd: EipRemoveCommand) -> ChangeReply: ...

    @command("vrouter.pf.create")
    @abstractmethod
    async def pf_create(self, cmd: PortForwardingCreateCommand) -> ChangeReply: ...

    @command("vrouter.pf.remove")
    @abstractmethod
    async def pf_remove(self, cmd: PortForwardingRemoveCommand) -> ChangeReply: ...

    @command("vrouter.dhcp.add")
    @abstractmethod
    async def dhcp_add(self, cmd: DhcpAddCommand) -> ChangeReply: ...

    @command("vrouter.dhcp.remove")
    @abstractmethod
    async def dhcp_remove(self, cmd: DhcpRemoveCommand) -> ChangeReply: ...

    @command("vrouter.dns.set")
    @abstractmethod
    async def dns_set(self, cmd: DnsSetCommand) -> ChangeReply: ...


def request_of(name: str) -> type[HostCommand]:
    """The command model of ``vrouter.<name>`` (the agent's journal replays commands by name)."""
    return commands_of(VirtualRouterAgent)[name].request
