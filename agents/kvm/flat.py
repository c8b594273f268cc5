"""Flat network DHCP on a KVM host (ZStack's ``mevoco.py``): per L3 network a namespace with
dnsmasq, plugged into the L3's bridge by a veth, answering only the VMs of this host.

- Every host of an L3 runs its own server with the same DHCP address; ebtables (chain
  ``rs-flat``) drops every frame between the bridge's uplink and the server's veth, so a host's
  server never hears another host's guests nor answers them, and its address is not seen twice.
- dnsmasq is given only static entries (``dhcp-range=<ip>,static``; one ``dhcp-host`` line per
  VM NIC of this host, so the lease is IPAM's address), rewritten from desired state; dnsmasq is
  restarted when any of its files changed.
- An L3 no longer in the desired state loses its namespace and its dnsmasq.

Namespace names are global on a machine; with ``netns`` set (a namespace host in tests) they start
with it, so two hosts on one machine never share one.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import os
import signal
import time
from pathlib import Path

from agents.kvm.secgroup import Runner, run_command
from bus.errors import RingstackError
from schema.agent import AgentErrors, FlatDhcpL3Spec, FlatDhcpReply

CHAIN = "rs-flat"


class HostNetnsCommands:
    """Commands on the host (in ``netns`` when the host is a namespace) and in the namespaces the
    flat services make, whose names start with ``<netns or 'rs'>-<kind>-``."""

    kind: str

    def __init__(self, state_dir: str, netns: str | None = None, run: Runner = run_command) -> None:
        self.state_dir = Path(state_dir)
        self.netns = netns
        self._run = run

    def _exec(self, argv: list[str], stdin: str | None = None, check: bool = True) -> str:
        try:
            done = self._run(argv, stdin)
        except FileNotFoundError:
            raise RingstackError(
                AgentErrors.HYPERVISOR_ERROR, f"{argv[0]} is not installed on this host"
            ) from None
        if check and done.returncode != 0:
            raise RingstackError(
                AgentErrors.HYPERVISOR_ERROR,
                f"{' '.join(argv)} failed: {done.stderr.strip()}",
                details={"command": " ".join(argv)},
            )
        return done.stdout

    def _host(self, *argv: str, stdin: str | None = None, check: bool = True) -> str:
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        return self._exec([*prefix, *argv], stdin, check)

    def namespace(self, uuid: str) -> str:
        return f"{self.netns or 'rs'}-{self.kind}-{uuid[:8]}"

    def _namespaces(self) -> set[str]:
        prefix = f"{self.netns or 'rs'}-{self.kind}-"
        out = self._exec(["ip", "netns", "list"])
        return {line.split()[0] for line in out.splitlines() if line.startswith(prefix)}

    def _ebtables_chain(self, chain: str, rules: list[str]) -> int:
        """Make ebtables chain ``chain`` (hooked first in FORWARD while it has rules) hold exactly
        ``rules``, in one ``ebtables-restore --noflush``; 1 if it changed."""
        save = self._host("ebtables-save")
        current = [line for line in save.splitlines() if line.startswith(f"-A {chain} ")]
        hooked = f"-A FORWARD -j {chain}" in save.splitlines()
        declared = f":{chain} " in save
        if current == rules and hooked == bool(rules) and (declared or not rules):
            return 0
        lines = ["*filter"]
        if rules or declared:
            lines.append(f":{chain} RETURN")  # declaring flushes it
        lines += rules
        if rules and not hooked:
            lines.append(f"-I FORWARD 1 -j {chain}")
        if not rules and hooked:
            lines.append(f"-D FORWARD -j {chain}")
        if not rules and declared:
            lines.append(f"-X {chain}")
        self._host("ebtables-restore", "--noflush", stdin="\n".join([*lines, "COMMIT", ""]))
        return 1


class FlatDhcp(HostNetnsCommands):
    kind = "dhcp"

    @staticmethod
    def _ports(l3_uuid: str) -> tuple[str, str]:
        return f"dho{l3_uuid[:8]}", f"dhi{l3_uuid[:8]}"  # host end (on the bridge), server end

    # ------------------------------------------------------------------ apply

    def apply(self, l3s: list[FlatDhcpL3Spec]) -> FlatDhcpReply:
        changed = 0
        wanted = {self.namespace(l3.l3_network_uuid): l3 for l3 in l3s}
        for ns in sorted(self._namespaces() - wanted.keys()):
            self._remove(ns)
            changed += 1
        for ns, l3 in sorted(wanted.items()):
            changed += self._ensure(ns, l3)
        changed += self._ebtables(l3s)
        return FlatDhcpReply(changed=bool(changed), servers=len(l3s))

    def _ensure(self, ns: str, l3: FlatDhcpL3Spec) -> int:
        changed = 0
        outer, inner = self._ports(l3.l3_network_uuid)
        if ns not in self._namespaces():
            self._exec(["ip", "netns", "add", ns])
            self._exec(["ip", "-n", ns, "link", "set", "lo", "up"])
            changed += 1
        if not self._exec(["ip", "-n", ns, "-o", "link", "show", inner], check=False).strip():
            self._host("ip", "link", "del", outer, check=False)  # a half-made pair
            self._host("ip", "link", "add", outer, "type", "veth", "peer", "name", inner, "netns", ns)
            changed += 1
        self._host("ip", "link", "set", outer, "master", l3.bridge_name)
        self._host("ip", "link", "set", outer, "up")
        prefix = ipaddress.IPv4Network(f"0.0.0.0/{l3.netmask}").prefixlen
        address = f"{l3.dhcp_server_ip}/{prefix}"
        have = self._exec(["ip", "-n", ns, "-o", "-4", "addr", "show", "dev", inner]).split()
        if address not in have:
            self._exec(["ip", "-n", ns, "addr", "flush", "dev", inner])
            self._exec(["ip", "-n", ns, "addr", "add", address, "dev", inner])
            changed += 1
        self._exec(["ip", "-n", ns, "link", "set", inner, "up"])
        return changed + self._dnsmasq(ns, inner, l3)

    def _dnsmasq(self, ns: str, inner: str, l3: FlatDhcpL3Spec) -> int:
        directory = self.state_dir / ns
        directory.mkdir(parents=True, exist_ok=True)
        hosts = "".join(f"{e.mac},set:{'d' if e.default else 'n'},{e.ip},{e.hostname}\n" for e in l3.entries)
        options = ""
        if l3.gateway:
            options += f"tag:d,option:router,{l3.gateway}\n"
        if l3.dns:
            options += f"tag:d,option:dns-server,{','.join(l3.dns)}\n"
        conf = (
            f"interface={inner}\nbind-interfaces\nexcept-interface=lo\nport=0\nuser=root\n"
            f"dhcp-range={l3.dhcp_server_ip},static,{l3.netmask},{l3.lease_time}\n"
            f"dhcp-hostsfile={directory / 'hosts'}\ndhcp-optsfile={directory / 'options'}\n"
            f"leasefile-ro\ndhcp-lease-max=65535\npid-file={directory / 'pid'}\n"
            f"log-facility={directory / 'log'}\nlog-dhcp\n"
            + (f"domain={l3.dns_domain}\n" if l3.dns_domain else "")
        )
        changed = (
            _write(directory / "dnsmasq.conf", conf)
            | _write(directory / "options", options)
            | _write(directory / "hosts", hosts)
        )
        pid = self._pid(directory)
        if pid is not None and changed:
            # A restart, not SIGHUP: a dnsmasq under the agent's test harness was seen to die on
            # SIGHUP without a word; a restart is what ZStack does on release anyway, and the
            # entries are static, so no lease is lost (the guest keeps its address meanwhile).
            _stop(pid)
            pid = None
        if pid is None:
            self._exec(["ip", "netns", "exec", ns, "dnsmasq", f"--conf-file={directory / 'dnsmasq.conf'}"])
            return 1
        return 0

    @staticmethod
    def _pid(directory: Path) -> int | None:
        try:
            pid = int((directory / "pid").read_text().strip())
            os.kill(pid, 0)
        except (OSError, ValueError):
            return None
        return pid

    def _remove(self, ns: str) -> None:
        pid = self._pid(self.state_dir / ns)
        if pid is not None:
            _stop(pid)
        l3_prefix = ns.rsplit("-", 1)[-1]
        self._host("ip", "link", "del", f"dho{l3_prefix}", check=False)
        self._exec(["ip", "netns", "del", ns], check=False)

    def _ebtables(self, l3s: list[FlatDhcpL3Spec]) -> int:
        """``rs-flat``: nothing passes between an uplink and a DHCP server's veth."""
        rules = []
        for l3 in sorted(l3s, key=lambda x: x.l3_network_uuid):
            outer, _ = self._ports(l3.l3_network_uuid)
            rules += [
                f"-A {CHAIN} -i {l3.uplink} -o {outer} -j DROP",
                f"-A {CHAIN} -i {outer} -o {l3.uplink} -j DROP",
            ]
        return self._ebtables_chain(CHAIN, rules)


def _write(path: Path, text: str) -> bool:
    """Write if different; True when it changed."""
    try:
        if path.read_text() == text:
            return False
    except FileNotFoundError:
        pass
    tmp = path.with_suffix(f".tmp{hashlib.sha1(text.encode()).hexdigest()[:6]}")
    tmp.write_text(text)
    tmp.replace(path)
    return True


def _kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _stop(pid: int, timeout: float = 5.0) -> None:
    """SIGTERM, then wait (bounded) for the process to go: its successor binds the same port."""
    _kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.02)
    _kill(pid, signal.SIGKILL)
