"""The virtual-router agent: one coroutine per command of ``schema.vrouter``.

The agent keeps one desired state (``VrState``) plus the NIC configuration, persisted in its state
directory, and brings the data plane to it: iptables rules (``rules``), the VIP addresses on the
public NIC, dnsmasq's entries (``dhcp``). Every mutating command computes the new desired state,
validates it as a whole, applies the difference and answers whether anything ``changed``. Commands
run one at a time (like ZStack's ``VyosLock``), so a batch is never interleaved with another.

iptables: the kernel's tables are read once (``iptables-save``) and then tracked in memory; an
incremental change is diffed against that copy and costs one ``iptables-restore --noflush`` per
table it touches. A restore refused because the kernel drifted from the copy (a rule deleted by
hand) re-reads the kernel and retries once. The reconcile loop re-reads periodically and repairs
drift.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import platform
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from importlib import metadata
from ipaddress import IPv4Address
from pathlib import Path

from pydantic import ValidationError

from agents.vrouter import rules
from agents.vrouter.config import VrouterConfig
from agents.vrouter.dhcp import Dnsmasq, GuestNet
from agents.vrouter.proc import Result, Runner
from bus.errors import RingstackError, Sys
from schema.agent_base import ConnectCommand, ConnectReply, HostCommand, HostFacts, PingCommand, PingReply
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
    check_consistent,
    join_states,
    request_of,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Link:
    mac: str
    up: bool
    addresses: list[str]  # IPv4 "ip/prefix"


def agent_version() -> str:
    try:
        return f"ringstack-vrouter-agent/{metadata.version('ringstack')}"
    except metadata.PackageNotFoundError:
        return "ringstack-vrouter-agent/unknown"


def updated(state: VrState, op: str, cmd: HostCommand) -> VrState:
    """``state`` with one incremental command applied (not yet checked for consistency)."""
    match op, cmd:
        case "snat.set", SnatSetCommand(snat=new):
            change: dict[str, object] = {
                "snats": [x for x in state.snats if x.guest_cidr != new.guest_cidr] + [new]
            }
        case "snat.remove", SnatRemoveCommand(guest_cidr=cidr):
            change = {"snats": [x for x in state.snats if x.guest_cidr != cidr]}
        case "vip.create", VipCreateCommand(vip=new):
            change = {"vips": [x for x in state.vips if x.ip != new.ip] + [new]}
        case "vip.remove", VipRemoveCommand(ip=ip):
            change = {"vips": [x for x in state.vips if x.ip != ip]}
        case "eip.create", EipCreateCommand(eip=new):
            change = {"eips": [x for x in state.eips if x.uuid != new.uuid] + [new]}
        case "eip.remove", EipRemoveCommand(uuid=uuid):
            change = {"eips": [x for x in state.eips if x.uuid != uuid]}
        case "pf.create", PortForwardingCreateCommand(rule=new):
            change = {"port_forwardings": [x for x in state.port_forwardings if x.uuid != new.uuid] + [new]}
        case "pf.remove", PortForwardingRemoveCommand(uuid=uuid):
            change = {"port_forwardings": [x for x in state.port_forwardings if x.uuid != uuid]}
        case "dhcp.add", DhcpAddCommand(entries=entries):
            macs = {e.mac for e in entries}
            change = {"dhcp": [x for x in state.dhcp if x.mac not in macs] + entries}
        case "dhcp.remove", DhcpRemoveCommand(macs=gone):
            drop = set(gone)
            change = {"dhcp": [x for x in state.dhcp if x.mac not in drop]}
        case "dns.set", DnsSetCommand(dns=dns):
            change = {"dns": dns}
        case _:
            raise RingstackError(Sys.INTERNAL, f"no update for {op} with {type(cmd).__name__}")
    return state.model_copy(update=change)


class SyncParts:
    """The parts of syncs sent in several messages, until each is whole."""

    def __init__(self) -> None:
        self._held: dict[str, dict[int, VrState]] = {}

    def take(self, cmd: SyncCommand) -> VrState | None:
        """The whole state once every part is in (checked across parts), else None."""
        if cmd.parts == 1:
            return cmd.state
        assert cmd.sync_id is not None  # the command's validator insists
        held = self._held.setdefault(cmd.sync_id, {})
        held[cmd.part] = cmd.state
        for other in list(self._held)[:-2]:  # an abandoned sync is forgotten
            del self._held[other]
        if len(held) < cmd.parts:
            return None
        del self._held[cmd.sync_id]
        state = join_states([held[i] for i in range(cmd.parts)])
        try:
            check_consistent(state)
        except ValueError as exc:
            raise RingstackError(Sys.INVALID_ARGUMENT, f"invalid sync {cmd.sync_id}: {exc}") from None
        return state


def check_change(state: VrState, op: str, cmd: HostCommand) -> None:
    """Raise ValueError when applying ``cmd`` to ``state`` (consistent) would break one of the
    rules of ``check_consistent``; the same verdict, but looking only at what the change touches
    (checking a 15,000-entry state whole on every change cost more than the change)."""
    match op, cmd:
        case "vip.create", VipCreateCommand() | ("snat.set", SnatSetCommand()):
            return  # replaced by key; nothing else can clash
        case "eip.create", EipCreateCommand(eip=new):
            vip = new.vip_ip
            if any(e.vip_ip == vip and e.uuid != new.uuid for e in state.eips):
                raise ValueError(f"duplicate EIP VIP {vip}")
            if any(p.vip_ip == vip for p in state.port_forwardings):
                raise ValueError(f"VIP {vip} is used by an EIP and by port forwarding")
        case "pf.create", PortForwardingCreateCommand(rule=new):
            vip = new.vip_ip
            if any(e.vip_ip == vip for e in state.eips):
                raise ValueError(f"VIP {vip} is used by an EIP and by port forwarding")
            for p in state.port_forwardings:
                if (
                    p.vip_ip == vip
                    and p.protocol == new.protocol
                    and p.uuid != new.uuid
                    and p.vip_port_start <= new.vip_port_end
                    and new.vip_port_start <= p.vip_port_end
                ):
                    raise ValueError(
                        f"port forwardings {p.uuid} and {new.uuid} overlap on {vip} {new.protocol}"
                    )
        case "dhcp.add", DhcpAddCommand(entries=entries):
            macs = {e.mac for e in entries}
            ips = [int(e.ip) for e in entries]
            _unique_values("DHCP MAC", [e.mac for e in entries])
            _unique_values("DHCP IP", ips)
            kept = {int(d.ip) for d in state.dhcp if d.mac not in macs}
            clash = kept.intersection(ips)
            if clash:
                raise ValueError(f"duplicate DHCP IP {IPv4Address(min(clash))}")
        case _:
            return  # removals and DNS settings cannot clash


def _unique_values(what: str, values: Sequence[Hashable]) -> None:
    if len(set(values)) != len(values):
        raise ValueError(f"duplicate {what} in one change")


JOURNAL_LIMIT = 1000  # journal lines before the state is written whole again


def host_facts() -> HostFacts:
    """What ``agent.connect`` tells of the appliance itself."""
    memory = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        memory = int(Path("/proc/meminfo").read_text().split()[1]) * 1024  # MemTotal, kB
    return HostFacts(
        hypervisor="vrouter",
        cpu_num=os.cpu_count() or 1,
        memory_size=memory,
        hostname=platform.node(),
        os=platform.platform(),
    )


class VrouterAgent(VirtualRouterAgent):
    def __init__(self, config: VrouterConfig, runner: Runner | None = None) -> None:
        self.config = config
        self.host_uuid = config.host_uuid
        self.runner = runner or Runner()
        self.base = Path(config.state_dir)
        self.base.mkdir(parents=True, exist_ok=True)
        self.dnsmasq = Dnsmasq(self.base / "dnsmasq", self.runner, lease_time=config.dhcp_lease_time)
        self.lock = asyncio.Lock()
        self.started = time.monotonic()
        self._journal_lines = 0
        self._sync_parts = SyncParts()
        self.state, self.nics = self._load()
        # The kernel as we last saw or made it: tables, links (names, VIP addresses), dnsmasq.
        self._tables: dict[str, rules.TableDump] = {}
        self._links_seen: dict[str, Link] | None = None
        self._dhcp_applied: bool | None = None
        self._vips_seen: set[int] | None = None
        self._renderer = rules.Renderer()
        self._desired: dict[str, rules.Chains] | None = None
        self._reconciler: asyncio.Task[None] | None = None
        self.drift_repairs = 0

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        await self._write_sysctl()
        if self.config.reconcile_interval > 0:
            self._reconciler = asyncio.create_task(self._reconcile_loop())

    async def close(self) -> None:
        if self._reconciler is not None:
            self._reconciler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reconciler

    async def _write_sysctl(self) -> None:
        # A router forwards (in a namespace the setting is the namespace's own).
        result = await self.runner.run(["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
        if not result.ok:
            log.warning("cannot enable forwarding: %s", result.stderr.strip())

    # ------------------------------------------------------------------ commands: identity

    async def connect(self, cmd: ConnectCommand) -> ConnectReply:
        # The protocol version was checked by the server before this runs.
        return ConnectReply(host_uuid=self.host_uuid, agent_version=agent_version(), facts=host_facts())

    async def ping(self, cmd: PingCommand) -> PingReply:
        return PingReply(
            host_uuid=self.host_uuid, agent_version=agent_version(), uptime=time.monotonic() - self.started
        )

    async def facts(self, cmd: FactsCommand) -> VrFacts:
        return await self._facts()

    # ------------------------------------------------------------------ commands: NICs and sync

    async def configure_nics(self, cmd: ConfigureNicsCommand) -> ChangeReply:
        async with self.lock:
            started = time.monotonic()
            links = await self._links()
            batch: list[str] = []
            nics = dict(self.nics)
            for nic in cmd.nics:
                name = self._name_of(links, nic.mac)
                have = links[name]
                if not have.up:
                    batch.append(f"link set dev {name} up")
                if str(nic.address) not in have.addresses:
                    batch.append(f"address replace {nic.address} dev {name}")
                # Another primary address on the NIC (an old configuration) goes; /32s are VIPs.
                for other in have.addresses:
                    if other != str(nic.address) and not other.endswith("/32"):
                        batch.append(f"address del {other} dev {name}")
                if nic.role == "Public" and nic.gateway is not None:
                    route = await self.runner.run(["ip", "-j", "route", "show", "default"])
                    current = json.loads(route.stdout or "[]") if route.ok else []
                    if not any(
                        r.get("gateway") == str(nic.gateway) and r.get("dev") == name for r in current
                    ):
                        batch.append(f"route replace default via {nic.gateway} dev {name}")
                nics[nic.mac] = nic
            if batch:
                await self._ip_batch(batch)
            self.nics = nics
            changed = await self._apply(self.state, reread=True) or bool(batch)
            self._save()
            return self._reply(changed, started)

    async def sync(self, cmd: SyncCommand) -> ChangeReply:
        """The whole desired state: afterwards the VR holds exactly this. The kernel is re-read
        first (a rebooted VR, rules deleted by hand), so the diff is against the truth."""
        async with self.lock:
            started = time.monotonic()
            state = self._sync_parts.take(cmd)
            if state is None:
                return self._reply(False, started).model_copy(update={"complete": False})
            changed = await self._apply(state, reread=True)
            return self._reply(changed, started)

    # ------------------------------------------------------------------ commands: incremental

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

    # ------------------------------------------------------------------ applying

    async def _change(self, op: str, cmd: VrCommand) -> ChangeReply:
        async with self.lock:
            started = time.monotonic()
            # Every item was validated on arrival; only the rules across items need checking, and
            # only where the change lands.
            try:
                check_change(self.state, op, cmd)
            except ValueError as exc:
                raise RingstackError(
                    VrErrors.CONFLICT, f"the change conflicts with the VR's state: {exc}"
                ) from None
            changed = await self._apply(updated(self.state, op, cmd), reread=False, journal=(op, cmd))
            return self._reply(changed, started)

    def _interfaces(self, links: dict[str, Link]) -> rules.Interfaces:
        by_mac = {v.mac: name for name, v in links.items()}
        roles: dict[str, list[str]] = {"Public": [], "Management": [], "Guest": []}
        for nic in self.nics.values():
            name = by_mac.get(nic.mac)
            if name is None:
                raise RingstackError(VrErrors.NIC_NOT_FOUND, f"no interface with MAC {nic.mac} in this VR")
            roles[nic.role].append(name)
        return rules.Interfaces(
            public=roles["Public"][0] if roles["Public"] else None,
            management=roles["Management"][0] if roles["Management"] else None,
            guests=tuple(sorted(roles["Guest"])),
        )

    async def _apply(
        self, state: VrState, *, reread: bool, journal: tuple[str, VrCommand] | None = None
    ) -> bool:
        """Bring the data plane to ``state``. ``reread``: look at the kernel first (sync, NIC
        changes, reconcile); otherwise trust what we last saw and did (incremental changes: no
        ``iptables-save``, no ``ip address show`` of thousands of VIPs)."""
        if reread or self._links_seen is None:
            self._links_seen = await self._links()
            self._vips_seen = None
        links = self._links_seen
        nics = self._interfaces(links)
        try:
            desired = self._renderer.render(state, nics)
        except rules.NotConfigured as exc:
            raise RingstackError(VrErrors.NOT_CONFIGURED, str(exc)) from None
        self._desired = desired
        changed = False
        changed_vips: set[str] = set()
        for table in rules.TABLES:
            lines = await self._apply_table(table, desired[table], reread=reread)
            changed |= bool(lines)
            changed_vips |= _vips_touched(lines)
        # The state is saved once the rules hold it: an incremental change after an agent restart
        # starts from it, and a crash before this point is repaired by the next sync.
        previous, self.state = self.state, state
        if previous is not state:
            self._persist(journal)
        changed |= await self._apply_vips(state, links, nics)
        dhcp_same = previous.dhcp is state.dhcp and previous.dns is state.dns
        if reread or not dhcp_same or self._dhcp_applied is None:
            changed |= await self._apply_dhcp(state, links, reread=reread)
            self._dhcp_applied = True
        if changed_vips:
            await self._forget_connections(changed_vips)
        return changed

    async def _apply_table(self, table: str, desired: rules.Chains, *, reread: bool) -> list[str]:
        if reread or table not in self._tables:
            self._tables[table] = await self._save_table(table)
        lines = rules.diff_table(table, desired, self._tables[table])
        if not lines:
            return lines
        result = await self._restore(table, lines)
        if not result.ok:  # the kernel drifted from our copy: read it and try once more
            self._tables[table] = await self._save_table(table)
            lines = rules.diff_table(table, desired, self._tables[table])
            if lines:
                result = await self._restore(table, lines)
                if not result.ok:
                    raise RingstackError(
                        VrErrors.APPLY_FAILED,
                        f"iptables-restore refused the {table} table: {result.stderr.strip()}",
                        details={"table": table},
                    )
        self._tables[table] = rules.apply_to_dump(self._tables[table], lines)
        return lines

    def _tool(self, name: str) -> str:
        return f"iptables-{self.config.firewall}-{name}"

    async def _save_table(self, table: str) -> rules.TableDump:
        result = await self.runner.run([self._tool("save"), "-t", table])
        if not result.ok:
            raise RingstackError(VrErrors.APPLY_FAILED, f"iptables-save -t {table}: {result.stderr.strip()}")
        return rules.parse_save(result.stdout)

    async def _restore(self, table: str, lines: list[str]) -> Result:
        return await self.runner.run(
            [self._tool("restore"), "--noflush", "-w", "5"], stdin=rules.restore_text(table, lines)
        )

    async def _apply_vips(self, state: VrState, links: dict[str, Link], nics: rules.Interfaces) -> bool:
        """Every VIP (and an SNAT address that is not the public NIC's own) as a /32 on the public
        NIC, so the VR answers ARP for it; /32s no longer wanted are removed. Compared as address
        objects (cheap to hash); only the difference is formatted."""
        if nics.public is None:
            return False
        public = next(n for n in self.nics.values() if n.role == "Public")
        # As integers: hashing IPv4Address objects is slow, and there may be 10,000s.
        want = {int(v.ip) for v in state.vips} | {int(e.vip_ip) for e in state.eips}
        want |= {int(p.vip_ip) for p in state.port_forwardings} | {int(s.public_ip) for s in state.snats}
        want.discard(int(public.address.ip))
        if self._vips_seen is None:
            self._vips_seen = {
                int(IPv4Address(a.removesuffix("/32")))
                for a in links[nics.public].addresses
                if a.endswith("/32") and a != str(public.address)
            }
        have = self._vips_seen
        added, gone = sorted(want - have), sorted(have - want)
        batch = [f"address add {IPv4Address(ip)}/32 dev {nics.public}" for ip in added]
        batch += [f"address del {IPv4Address(ip)}/32 dev {nics.public}" for ip in gone]
        if not batch:
            return False
        try:
            await self._ip_batch(batch)
        except RingstackError:
            self._links_seen = self._vips_seen = None  # we no longer know what the NIC holds
            raise
        self._vips_seen = want
        return True

    async def _apply_dhcp(self, state: VrState, links: dict[str, Link], *, reread: bool) -> bool:
        by_mac = {v.mac: name for name, v in links.items()}
        nets = [
            GuestNet(by_mac[n.mac], n.address)
            for n in self.nics.values()
            if n.role == "Guest" and n.mac in by_mac
        ]
        try:
            return await self.dnsmasq.apply(nets, state.dhcp, state.dns, reread=reread)
        except RuntimeError as exc:
            raise RingstackError(VrErrors.APPLY_FAILED, str(exc)) from None

    async def _forget_connections(self, vips: set[str]) -> None:
        """Tracked connections keep their old NAT; drop those of VIPs whose rules changed (an EIP
        moved to another VM must not keep reaching the first). One process per VIP, only for
        VIPs whose rules changed or went."""
        for vip in sorted(vips):
            await self.runner.run(["conntrack", "-D", "--orig-dst", vip])  # exit 1: none to delete

    async def _ip_batch(self, commands: list[str]) -> None:
        result = await self.runner.run(["ip", "-batch", "-"], stdin="\n".join(commands) + "\n")
        if not result.ok:
            raise RingstackError(VrErrors.APPLY_FAILED, f"ip refused: {result.stderr.strip()}")

    async def _links(self) -> dict[str, Link]:
        result = await self.runner.run(["ip", "-j", "address", "show"])
        if not result.ok:
            raise RingstackError(VrErrors.APPLY_FAILED, f"ip address show: {result.stderr.strip()}")
        return {
            link["ifname"]: Link(
                mac=link.get("address", ""),
                up="UP" in link.get("flags", []),
                addresses=[
                    f"{a['local']}/{a['prefixlen']}"
                    for a in link.get("addr_info", [])
                    if a.get("family") == "inet"
                ],
            )
            for link in json.loads(result.stdout)
        }

    def _name_of(self, links: dict[str, Link], mac: str) -> str:
        for name, link in links.items():
            if link.mac == mac:
                return name
        raise RingstackError(
            VrErrors.NIC_NOT_FOUND, f"no interface with MAC {mac} in this VR", details={"mac": mac}
        )

    # ------------------------------------------------------------------ drift

    async def reconcile(self) -> bool:
        """Re-read the kernel and repair whatever differs from the desired state."""
        async with self.lock:
            changed = await self._apply(self.state, reread=True)
        if changed:
            self.drift_repairs += 1
            log.warning("repaired drift from the desired state")
        return changed

    async def _reconcile_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.reconcile_interval)
            try:
                await self.reconcile()
            except RingstackError as exc:
                log.warning("reconcile failed: %s", exc.message)

    # ------------------------------------------------------------------ state and facts

    def _counts(self) -> VrCounts:
        s = self.state
        desired = self._desired or {}
        return VrCounts(
            snats=len(s.snats),
            vips=len(s.vips),
            eips=len(s.eips),
            port_forwardings=len(s.port_forwardings),
            dhcp_entries=len(s.dhcp),
            nat_rules=rules.count_rules(desired, "nat"),
            filter_rules=rules.count_rules(desired, "filter"),
        )

    def _reply(self, changed: bool, started: float) -> ChangeReply:
        return ChangeReply(changed=changed, counts=self._counts(), duration=time.monotonic() - started)

    async def _facts(self) -> VrFacts:
        links = await self._links()
        roles = {n.mac: n.role for n in self.nics.values()}
        return VrFacts(
            agent_version=agent_version(),
            firewall=f"iptables-{self.config.firewall}",
            dnsmasq_pid=self.dnsmasq.pid(),
            dnsmasq_restarts=self.dnsmasq.restarts,
            dnsmasq_reloads=self.dnsmasq.reloads,
            processes=dict(self.runner.spawned),
            nics=[
                NicFacts(
                    name=name,
                    mac=link.mac,
                    addresses=[a for a in link.addresses if not a.endswith("/32")],
                    vips=sum(a.endswith("/32") for a in link.addresses),
                    role=roles.get(link.mac),
                )
                for name, link in sorted(links.items())
                if name != "lo"
            ],
            counts=self._counts(),
        )

    # The desired state survives an agent restart as a snapshot (state.json) plus a journal of
    # the incremental commands since (journal.jsonl, one line each): appending a line costs
    # microseconds where rewriting 15,000 entries costs 100+ ms. The snapshot is rewritten on
    # every full sync and NIC change, and when the journal grows long.

    def _persist(self, journal: tuple[str, VrCommand] | None) -> None:
        if journal is not None and self._journal_lines < JOURNAL_LIMIT:
            op, cmd = journal
            with open(self.base / "journal.jsonl", "a") as f:
                f.write(json.dumps({"op": op, "command": cmd.to_wire()}) + "\n")
            self._journal_lines += 1
            return
        self._save()

    def _save(self) -> None:
        data = {"state": self.state.to_wire(), "nics": [n.to_wire() for n in self.nics.values()]}
        path = self.base / "state.json"
        tmp = path.with_name("state.json.tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.base / "journal.jsonl")
        self._journal_lines = 0

    def _load(self) -> tuple[VrState, dict[str, NicConfig]]:
        path = self.base / "state.json"
        try:
            data = json.loads(path.read_text())
            state = VrState.from_wire(data["state"])
            nics = {n.mac: n for n in (NicConfig.from_wire(n) for n in data["nics"])}
        except FileNotFoundError:
            return VrState(), {}
        except (ValueError, KeyError, ValidationError) as exc:
            log.error("ignoring an unreadable %s (%s); the next sync restores the state", path, exc)
            return VrState(), {}
        try:
            with open(self.base / "journal.jsonl") as f:
                for line in f:
                    entry = json.loads(line)
                    command_model = request_of(f"vrouter.{entry['op']}")
                    state = updated(state, entry["op"], command_model.from_wire(entry["command"]))
                    self._journal_lines += 1
        except FileNotFoundError:
            pass
        except (ValueError, KeyError, ValidationError, RingstackError) as exc:
            # A torn last line (killed mid-write): the commands before it stand.
            log.error("journal of %s ends early (%s); the next sync restores the state", path, exc)
        return state, nics


def _vips_touched(lines: list[str]) -> set[str]:
    """VIPs whose DNAT rules were deleted or rewritten by ``lines`` (pure additions need no
    conntrack cleanup)."""
    out: set[str] = set()
    for line in lines:
        if line.startswith("-D ") and "-j DNAT" in line:
            words = line.split()
            if "-d" in words:
                out.add(words[words.index("-d") + 1].removesuffix("/32"))
    return out
