"""DHCP and DNS for the guest networks: one dnsmasq, whose entries change by SIGHUP, never a restart.

dnsmasq re-reads ``dhcp-hostsfile``, ``dhcp-optsfile``, ``addn-hosts`` and ``servers-file`` on
SIGHUP, so adding or removing a guest is: rewrite those files (atomically), send SIGHUP. Only a
change of the guest networks themselves (``interface=``/``dhcp-range=``, in the main config)
restarts it, as Neutron does when a network's subnets change. A removed entry's lease is released
(``dhcp_release``) so its IP can go to another MAC at once.

Guests are told: router and DNS server = the VR's address on their network (dnsmasq's default for a
static range), search domain = the L3's domain; the VR forwards queries to the L3's DNS servers and
answers the guests' host names itself. A non-default NIC's entry gets neither router nor DNS.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from dataclasses import dataclass
from ipaddress import IPv4Interface
from pathlib import Path

from agents.vrouter.proc import Runner
from schema.vrouter import DhcpEntry, DnsSettings

NO_DEFAULT_TAG = "rs-nodefault"


@dataclass(frozen=True)
class GuestNet:
    interface: str
    address: IPv4Interface  # the VR's guest address (the gateway) and the subnet


def render_conf(base: Path, nets: list[GuestNet], lease_time: int) -> str:
    lines = [
        "# written by the ringstack virtual-router agent; changes here are overwritten",
        "no-resolv",
        "no-hosts",
        "bind-dynamic",
        "user=root",
        "dhcp-authoritative",
        "dhcp-lease-max=65535",
        f"dhcp-hostsfile={base / 'hosts'}",
        f"dhcp-optsfile={base / 'opts'}",
        f"addn-hosts={base / 'names'}",
        f"servers-file={base / 'servers'}",
        f"dhcp-leasefile={base / 'leases'}",
        f"pid-file={base / 'dnsmasq.pid'}",
        f"log-facility={base / 'dnsmasq.log'}",
    ]
    for n in nets:
        net = n.address.network
        lines.append(f"interface={n.interface}")
        lines.append(f"dhcp-range={net.network_address},static,{net.netmask},{lease_time}")
    return "\n".join(lines) + "\n"


def render_hosts(entries: list[DhcpEntry]) -> str:
    out = []
    for e in entries:
        tag = "" if e.default_route else f"set:{NO_DEFAULT_TAG},"
        name = f",{e.hostname}" if e.hostname else ""
        out.append(f"{e.mac},{tag}{e.ip}{name}")
    return "\n".join(out) + ("\n" if out else "")


def render_opts(dns: DnsSettings) -> str:
    lines = [f"tag:{NO_DEFAULT_TAG},option:router", f"tag:{NO_DEFAULT_TAG},option:dns-server"]
    if dns.domain:
        lines.append(f"option:domain-name,{dns.domain}")
    return "\n".join(lines) + "\n"


def render_names(entries: list[DhcpEntry], dns: DnsSettings) -> str:
    out = []
    for e in entries:
        if e.hostname:
            fqdn = f" {e.hostname}.{dns.domain}" if dns.domain else ""
            out.append(f"{e.ip} {e.hostname}{fqdn}")
    return "\n".join(out) + ("\n" if out else "")


def render_servers(dns: DnsSettings) -> str:
    lines = [f"server={s}\n" for s in dns.servers]
    if dns.domain:  # the guests' own domain is answered here only (never forwarded, never REFUSED)
        lines.append(f"server=/{dns.domain}/\n")
    return "".join(lines)


def _write(path: Path, text: str) -> bool:
    """Write atomically; False when the file already holds ``text``."""
    with contextlib.suppress(FileNotFoundError):
        if path.read_text() == text:
            return False
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return True


@dataclass(frozen=True)
class Rendered:
    entry: DhcpEntry
    hosts: str  # its dhcp-hostsfile line
    names: str  # its addn-hosts line ("" without a host name)
    domain: str
    ip: str


class Dnsmasq:
    def __init__(
        self, base: Path, runner: Runner, *, binary: str = "dnsmasq", lease_time: int = 3600
    ) -> None:
        self.base = base
        self.runner = runner
        self.binary = binary
        self.lease_time = lease_time
        self.restarts = 0
        self.reloads = 0
        # What we last wrote (file -> text) and rendered (mac -> entry, its hosts and names
        # lines): a change of one entry among thousands formats and compares only what changed.
        self._written: dict[Path, str] = {}
        self._lines: dict[str, Rendered] = {}
        self._leased_macs: dict[str, str] | None = None  # mac -> ip of the entries last applied
        base.mkdir(parents=True, exist_ok=True)
        os.chmod(base, 0o755)

    @property
    def conf(self) -> Path:
        return self.base / "dnsmasq.conf"

    def pid(self) -> int | None:
        """The running dnsmasq of this config (it survives an agent restart), or None."""
        try:
            pid = int((self.base / "dnsmasq.pid").read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (FileNotFoundError, ValueError, ProcessLookupError):
            return None
        return pid if f"--conf-file={self.conf}".encode() in cmdline else None

    async def apply(
        self, nets: list[GuestNet], entries: list[DhcpEntry], dns: DnsSettings, *, reread: bool = False
    ) -> bool:
        """Bring dnsmasq to serve exactly ``entries``; True when anything changed. ``reread``:
        compare with the files on disk, not with what we last wrote (a sync, a reconcile)."""
        if reread:
            self._written.clear()
        old = self._leased_macs if self._leased_macs is not None else _read_hosts(self.base / "hosts")
        hosts, names = self._render(entries, dns)
        files = [
            self._write(self.base / "hosts", hosts),
            self._write(self.base / "opts", render_opts(dns)),
            self._write(self.base / "names", names),
            self._write(self.base / "servers", render_servers(dns)),
        ]
        conf_changed = self._write(self.conf, render_conf(self.base, nets, self.lease_time))
        self._leased_macs = {mac: r.ip for mac, r in self._lines.items()}
        pid = self.pid()
        if not nets:
            if pid is not None:
                await self._stop(pid)
                return True
            return any(files) or conf_changed
        if pid is None or conf_changed:
            if pid is not None:
                await self._stop(pid)
                self.restarts += 1
            await self._start()
            return True
        if any(files):
            os.kill(pid, signal.SIGHUP)
            self.reloads += 1
            await self._release(nets, old, entries)
        return any(files)

    def _render(self, entries: list[DhcpEntry], dns: DnsSettings) -> tuple[str, str]:
        """The hosts and names files, as ``render_hosts``/``render_names`` write them, reusing
        the lines of entries unchanged since the last time."""
        domain = dns.domain or ""
        old: dict[str, Rendered] = self._lines
        fresh: dict[str, Rendered] = {}
        for e in entries:
            hit = old.get(e.mac)
            if hit is None or hit.domain != domain or not (hit.entry is e or hit.entry == e):
                hit = Rendered(e, render_hosts([e]), render_names([e], dns), domain, str(e.ip))
            fresh[e.mac] = hit
        self._lines = fresh
        return "".join(r.hosts for r in fresh.values()), "".join(r.names for r in fresh.values())

    def _write(self, path: Path, text: str) -> bool:
        if self._written.get(path) == text:
            return False
        changed = _write(path, text)
        self._written[path] = text
        return changed

    async def _start(self) -> None:
        result = await self.runner.run([self.binary, f"--conf-file={self.conf}"])
        if not result.ok:
            raise RuntimeError(f"dnsmasq did not start: {result.stderr.strip() or result.stdout.strip()}")
        # The daemonised child writes its pid file after the parent has exited: wait for it, or
        # the next change would not find the dnsmasq it must signal and would start a second one.
        for _ in range(500):
            if self.pid() is not None:
                return
            await asyncio.sleep(0.01)
        raise RuntimeError("dnsmasq started but wrote no pid file within 5 s")

    async def _stop(self, pid: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        for _ in range(100):  # dnsmasq exits within milliseconds; never wait forever
            if not _alive(pid):
                break
            await asyncio.sleep(0.02)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    async def _release(self, nets: list[GuestNet], old: dict[str, str], entries: list[DhcpEntry]) -> None:
        """Release the leases of entries removed or moved to another IP (only those leased)."""
        now = {e.mac: str(e.ip) for e in entries}
        gone = {mac: ip for mac, ip in old.items() if now.get(mac) != ip}
        if not gone:
            return
        leases = _read_leases(self.base / "leases")
        for mac, ip in gone.items():
            if leases.get(mac) != ip:
                continue
            net = next((n for n in nets if _contains(n.address, ip)), None)
            if net is not None:
                await self.runner.run(["dhcp_release", net.interface, ip, mac])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _contains(address: IPv4Interface, ip: str) -> bool:
    from ipaddress import IPv4Address

    return IPv4Address(ip) in address.network


def _read_hosts(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    with contextlib.suppress(FileNotFoundError):
        for line in path.read_text().splitlines():
            fields = [f for f in line.split(",") if not f.startswith("set:")]
            if len(fields) >= 2:
                out[fields[0]] = fields[1]
    return out


def _read_leases(path: Path) -> dict[str, str]:
    """mac -> ip of the leases dnsmasq holds (its lease file: expiry mac ip name client-id)."""
    out: dict[str, str] = {}
    with contextlib.suppress(FileNotFoundError):
        for line in path.read_text().splitlines():
            fields = line.split()
            if len(fields) >= 3:
                out[fields[1]] = fields[2]
    return out
