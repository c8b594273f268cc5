"""A virtual router made of network namespaces, with the real agent process inside.

``VrLab`` builds, with random-suffixed names (helpers and CI runs share the machine):

- ``vr``: the router. ``vpub`` faces ``outside`` (203.0.113.1/24, gateway .254); ``vguest`` is
  on the guest bridge (10.9.0.1/24, the guests' gateway). The agent runs here
  (``ip netns exec``) as ``python -m agents.vrouter``;
- ``sw``: a switch namespace holding the guest bridge, so nothing is created in the machine's own
  namespace;
- ``outside``: the public side, 203.0.113.254/24 and .253/24 (a second source for allowed-CIDR
  checks);
- guests: one namespace each, ``eth0`` on the bridge with the MAC the test gives.

The agent reaches the broker like a VR reaches it over its management NIC: here through socat,
a TCP port on the namespace's loopback relayed over a unix socket to the machine's broker (unix
sockets cross namespaces; no address is added outside our namespaces).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import uuid as uuidlib
from pathlib import Path

import kombu

from bus.topology import Topology
from mgmt.core.agents import AgentClient
from mgmt.core.brokeradmin import BrokerAdmin
from schema import vrouter as vr
from tests.support.netns import Netns, sh, wait_until
from tests.support.procs import ROOT

PUBLIC = "203.0.113.1/24"
PUBLIC_GW = "203.0.113.254"
OUTSIDE_2 = "203.0.113.253"
GUEST = "10.9.0.1/24"
PUB_MAC = "02:00:00:00:01:01"
GUEST_MAC = "02:00:00:00:02:01"

UDHCPC_SCRIPT = """#!/bin/sh
case "$1" in
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/$mask" dev "$interface"
    [ -n "$router" ] && ip route replace default via "$router"
    env > "$0.$interface.env"
    ;;
esac
"""


class AgentProcess:
    def __init__(self, netns: Netns, config: Path) -> None:
        self.lines: list[str] = []
        self.ready = threading.Event()
        env = {k: v for k, v in os.environ.items() if not k.startswith("RINGSTACK_")}
        self.proc = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                netns.name,
                sys.executable,
                "-m",
                "agents.vrouter",
                "--config",
                str(config),
            ],
            cwd=ROOT,
            env={**env, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if " ready" in line:
                self.ready.set()
        self.ready.set()

    def wait_ready(self, timeout: float = 60) -> None:
        if not self.ready.wait(timeout) or self.proc.poll() is not None:
            raise AssertionError("the VR agent did not start:\n" + "\n".join(self.lines[-30:]))

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class VrLab:
    def __init__(
        self,
        tmp: Path,
        namespace: str,
        broker_url: str,
        *,
        reconcile_interval: float = 0,
        firewall: str = "nft",
    ) -> None:
        self.firewall = firewall
        self.tmp = tmp
        self.namespace = namespace
        self.broker_url = broker_url
        self.vr_uuid = uuidlib.uuid4().hex
        self.reconcile_interval = reconcile_interval
        self.netns: list[Netns] = []
        self.relays: list[subprocess.Popen[bytes]] = []
        self.agent: AgentProcess | None = None
        self.guests: dict[str, Netns] = {}
        self.vr = self._ns("rsvr")
        self.sw = self._ns("rssw")
        self.outside = self._ns("rsvo")
        self.state_dir = tmp / "vr-state"

    def _ns(self, prefix: str) -> Netns:
        ns = Netns(prefix)
        self.netns.append(ns)
        return ns

    # ------------------------------------------------------------------ building

    def build(self) -> None:
        self.outside.ip(
            "link",
            "add",
            "o0",
            "type",
            "veth",
            "peer",
            "name",
            "vpub",
            "address",
            PUB_MAC,
            "netns",
            self.vr.name,
        )
        self.outside.ip("addr", "add", f"{PUBLIC_GW}/24", "dev", "o0")
        self.outside.ip("addr", "add", f"{OUTSIDE_2}/24", "dev", "o0")
        self.outside.ip("link", "set", "o0", "up")
        self.sw.ip("link", "add", "br0", "type", "bridge")
        self.sw.ip("link", "set", "br0", "up")
        self.sw.ip(
            "link",
            "add",
            "pvr",
            "type",
            "veth",
            "peer",
            "name",
            "vguest",
            "address",
            GUEST_MAC,
            "netns",
            self.vr.name,
        )
        self.sw.ip("link", "set", "pvr", "master", "br0", "up")

    def add_guest(self, mac: str) -> Netns:
        guest = self._ns("rsvg")
        port = f"p{len(self.guests)}"
        self.sw.ip(
            "link", "add", port, "type", "veth", "peer", "name", "eth0", "address", mac, "netns", guest.name
        )
        self.sw.ip("link", "set", port, "master", "br0", "up")
        guest.ip("link", "set", "eth0", "up")
        self.guests[mac] = guest
        return guest

    def static_ip(self, guest: Netns, address: str) -> None:
        guest.ip("addr", "add", address, "dev", "eth0")
        guest.ip("route", "replace", "default", "via", GUEST.split("/", maxsplit=1)[0])

    def dhcp(self, guest: Netns, *, tries: int = 10) -> dict[str, str]:
        """Run busybox udhcpc in ``guest`` until it holds a lease; its environment (ip, router,
        dns, domain...)."""
        script = self.tmp / f"udhcpc-{guest.name}.sh"
        script.write_text(UDHCPC_SCRIPT)
        script.chmod(0o755)
        guest.run(
            "busybox",
            "udhcpc",
            "-i",
            "eth0",
            "-n",
            "-q",
            "-f",
            "-t",
            str(tries),
            "-T",
            "1",
            "-s",
            str(script),
            timeout=60,
        )
        env = Path(f"{script}.eth0.env").read_text().splitlines()
        return dict(line.split("=", 1) for line in env if "=" in line)

    # ------------------------------------------------------------------ the agent

    async def start_agent(self) -> None:
        """The VR's own broker user, the relay to the broker, and the agent process."""
        admin = BrokerAdmin()
        credentials = await admin.ensure_agent_user_async(self.namespace, self.vr_uuid)
        await asyncio.to_thread(self._relay)
        config = self.tmp / "vrouter-agent.toml"
        config.write_text(
            f'host_uuid = "{self.vr_uuid}"\n'
            f'broker_url = "{credentials.url(self.broker_url)}"\n'
            f'namespace = "{self.namespace}"\n'
            f'state_dir = "{self.state_dir}"\n'
            f"reconcile_interval = {self.reconcile_interval}\n"
            f'firewall = "{self.firewall}"\n'
            'log_level = "INFO"\n'
        )
        self.agent = AgentProcess(self.vr, config)
        await asyncio.to_thread(self.agent.wait_ready)

    def _relay(self) -> None:
        sock = self.tmp / "broker.sock"
        if not self.relays:
            self.relays.append(
                subprocess.Popen(
                    ["socat", f"UNIX-LISTEN:{sock},fork", "TCP:127.0.0.1:5672"], stderr=subprocess.DEVNULL
                )
            )
            wait_until(sock.exists, 10, "the broker relay socket")
            self.relays.append(
                subprocess.Popen(
                    [
                        "ip",
                        "netns",
                        "exec",
                        self.vr.name,
                        "socat",
                        "TCP-LISTEN:5672,bind=127.0.0.1,reuseaddr,fork",
                        f"UNIX-CONNECT:{sock}",
                    ],
                    stderr=subprocess.DEVNULL,
                )
            )
            wait_until(lambda: ":5672 " in self.vr.run("ss", "-ltn").stdout, 10, "the relay inside the VR")

    def kill_agent(self) -> None:
        if self.agent is not None:
            self.agent.kill()

    def client(self, bus) -> AgentClient:  # type: ignore[no-untyped-def]
        return AgentClient(bus, default_timeout=60, protocol=vr.VirtualRouterAgent)

    def nics(self) -> vr.ConfigureNicsCommand:
        return vr.ConfigureNicsCommand(
            host_uuid=self.vr_uuid,
            nics=[
                vr.NicConfig(mac=PUB_MAC, role="Public", address=PUBLIC, gateway=PUBLIC_GW),  # type: ignore[arg-type]
                vr.NicConfig(mac=GUEST_MAC, role="Guest", address=GUEST),  # type: ignore[arg-type]
            ],
        )

    def upstream_dns(self, names: dict[str, str]) -> subprocess.Popen[bytes]:
        """A DNS server on the outside (an L3's DNS server) answering ``names``; kill it after."""
        argv = ["ip", "netns", "exec", self.outside.name, "dnsmasq", "--keep-in-foreground", "--no-resolv"]
        argv += [
            "--no-hosts",
            f"--listen-address={PUBLIC_GW}",
            "--bind-interfaces",
            f"--pid-file={self.tmp}/up.pid",
        ]
        argv += [f"--address=/{name}/{ip}" for name, ip in names.items()]
        return subprocess.Popen(argv, stderr=subprocess.DEVNULL)

    # ------------------------------------------------------------------ looking

    def save(self, table: str, tool: str = "iptables-nft-save") -> str:
        return self.vr.run(tool, "-t", table).stdout

    def serve(self, ns: Netns, label: str, proto: str, *ports: int) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                ns.name,
                sys.executable,
                "-m",
                "tests.support.netprobe",
                "serve",
                label,
                proto,
                *map(str, ports),
            ],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        return proc

    def call(
        self, ns: Netns, proto: str, host: str, port: int, *, source: str | None = None, timeout: float = 2
    ) -> str | None:
        argv = [
            sys.executable,
            "-m",
            "tests.support.netprobe",
            "call",
            proto,
            host,
            str(port),
            "--timeout",
            str(timeout),
        ]
        if source:
            argv += ["--source", source]
        done = subprocess.run(
            ["ip", "netns", "exec", ns.name, *argv],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=timeout + 30,
            check=False,
        )
        return done.stdout.strip() if done.returncode == 0 else None

    # ------------------------------------------------------------------ teardown

    async def close(self) -> None:
        self.kill_agent()
        for relay in self.relays:
            relay.kill()
            relay.wait(10)
        for ns in reversed(self.netns):
            ns.close()
        await BrokerAdmin().delete_agent_user_async(self.namespace, self.vr_uuid)
        with kombu.Connection(self.broker_url) as conn:  # the VR's durable queue, left by its agent
            channel = conn.channel()
            channel.queue_delete(Topology(self.namespace).agent_queue(self.vr_uuid).name)
            channel.close()


__all__ = ["VrLab", "sh"]
