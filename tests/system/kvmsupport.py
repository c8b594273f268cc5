"""Helpers for the KVM agent's tests: network namespaces as hosts, libvirt's test driver with a
private state per agent, an in-process agent on the broker, and waiting without fixed sleeps."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
import uuid as uuidlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kombu

from agents.common.server import AgentServer
from agents.kvm.agent import KvmAgent
from agents.kvm.bus import AgentBus
from agents.kvm.config import AgentConfig
from bus.topology import Topology
from mgmt.core import hostdeploy
from mgmt.core.agents import AgentClient
from mgmt.core.flow import Flow
from mgmt.core.hostdeploy import HostDeploy
from schema.agent import REPORT_VM_STATE, L2Spec, NicSpec, VmSpec, VmStateReport, VolumeSpec
from tests.support.cluster import until
from tests.support.netns import Netns, sh, wait_until

MiB = 1 << 20
GiB = 1 << 30

# libvirt's test driver: a file URI gives each connection its own in-memory hypervisor, so agents
# in one process (and tests) never see each other's domains, as test:///default would share them.
TEST_NODE_XML = """<node>
  <cpu><mhz>2000</mhz><model>ringstack-test</model><active>4</active><nodes>1</nodes>
       <sockets>1</sockets><cores>4</cores><threads>1</threads></cpu>
  <memory>8388608</memory>
</node>
"""


_VLAN: list[bool] = []


def kernel_has_vlan() -> bool:
    """Whether this kernel can make 802.1Q interfaces (some CI kernels have no VLAN support and
    cannot load modules); asked once, in a scratch namespace."""
    if not _VLAN:
        ns = Netns("rskv")
        try:
            ns.ip("link", "add", "probe", "type", "veth", "peer", "name", "probe1")
            _VLAN.append(
                ns.ip(
                    "link", "add", "link", "probe", "name", "probe.5", "type", "vlan", "id", "5", check=False
                ).returncode
                == 0
            )
        finally:
            ns.close()
    return _VLAN[0]


@dataclass
class HostNetwork:
    """A KVM host's network as namespaces: ``host`` has ``eth0`` (with an address) whose other end
    is in ``outside`` (a switch with an untagged address and a VLAN 100 address)."""

    host: Netns
    outside: Netns
    extra: list[Netns] = field(default_factory=list)

    HOST_IP = "169.254.10.1/24"
    OUTSIDE_IP = "169.254.10.2"
    VLAN = 100
    VLAN_OUTSIDE_IP = "169.254.100.2"

    @classmethod
    def create(cls) -> HostNetwork:
        host, outside = Netns("rskh"), Netns("rsko")
        net = cls(host, outside)
        try:
            net._cable()
        except BaseException:
            net.close()  # no namespace left behind by a failed set-up
            raise
        return net

    def _cable(self) -> None:
        cls, host, outside = type(self), self.host, self.outside
        host.ip("link", "add", "eth0", "type", "veth", "peer", "name", "up0", "netns", outside.name)
        host.ip("addr", "add", cls.HOST_IP, "dev", "eth0")
        host.ip("link", "set", "eth0", "up")
        outside.ip("addr", "add", f"{cls.OUTSIDE_IP}/24", "dev", "up0")
        outside.ip("link", "set", "up0", "up")
        if kernel_has_vlan():
            outside.ip("link", "add", "link", "up0", "name", "up0.100", "type", "vlan", "id", str(cls.VLAN))
            outside.ip("addr", "add", f"{cls.VLAN_OUTSIDE_IP}/24", "dev", "up0.100")
            outside.ip("link", "set", "up0.100", "up")

    def vm_port(self, bridge: str, address: str) -> Netns:
        """A veth whose host end is a port of ``bridge`` (what a VM's tap is) and whose other end
        sits in a namespace of its own with ``address``: a stand-in guest to ping from."""
        guest = Netns("rskg")
        self.extra.append(guest)
        port = f"vm{guest.name[-6:]}"
        self.host.ip("link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", guest.name)
        self.host.ip("link", "set", port, "master", bridge)
        self.host.ip("link", "set", port, "up")
        guest.ip("addr", "add", address, "dev", "eth0")
        guest.ip("link", "set", "eth0", "up")
        return guest

    def pings(self, ns: Netns, address: str) -> bool:
        return ns.run("busybox", "ping", "-c", "1", "-W", "2", address, check=False).returncode == 0

    def close(self) -> None:
        for ns in [*self.extra, self.host, self.outside]:
            ns.close()


def l2(bridge: str = "br_eth0", vlan: int | None = None, physical: str = "eth0") -> L2Spec:
    return L2Spec(
        uuid=uuidlib.uuid4().hex,
        type="L2VlanNetwork" if vlan else "L2NoVlanNetwork",
        physical_interface=physical,
        vlan=vlan,
        bridge_name=bridge,
    )


def nic(mac: str = "fa:16:3e:00:00:01", device_id: int = 0, network: L2Spec | None = None) -> NicSpec:
    return NicSpec(
        uuid=uuidlib.uuid4().hex,
        mac=mac,
        ip="169.254.10.50",
        l3_network_uuid=uuidlib.uuid4().hex,
        l2=network or l2(),
        device_id=device_id,
        default=device_id == 0,
    )


def volume(path: str, device_id: int = 0, kind: str = "Root") -> VolumeSpec:
    return VolumeSpec(
        uuid=uuidlib.uuid4().hex,
        install_path=path,
        size=GiB,
        device_id=device_id,
        type=kind,  # type: ignore[arg-type]
    )


def vm_spec(root: str = "/ps/volumes/root.qcow2", nics: list[NicSpec] | None = None, **kw: Any) -> VmSpec:
    uuid = uuidlib.uuid4().hex
    fields: dict[str, Any] = {"cpu_num": 1, "memory_size": 128 * MiB, **kw}
    return VmSpec(uuid=uuid, name=f"vm-{uuid[:6]}", root_volume=volume(root), nics=nics or [], **fields)


@dataclass
class InProcessAgent:
    """A KvmAgent served on the broker from the test's own event loop."""

    agent: KvmAgent
    server: AgentServer
    bus: AgentBus
    client: AgentClient
    host_uuid: str
    reports: list[VmStateReport] = field(default_factory=list)

    @classmethod
    async def start(cls, config: AgentConfig, client_bus: Any) -> InProcessAgent:
        bus = AgentBus(config.broker_url, Topology(config.namespace), config.host_uuid)
        server = AgentServer(bus)
        reports: list[VmStateReport] = []

        async def report(body: VmStateReport) -> None:
            reports.append(body)
            await server.report(config.host_uuid, REPORT_VM_STATE, body)

        agent = KvmAgent(config, reporter=report)
        await agent.start()
        await bus.start()
        await server.serve(agent)
        return cls(agent, server, bus, AgentClient(client_bus, default_timeout=30), config.host_uuid, reports)

    async def close(self) -> None:
        await self.bus.close()
        await self.agent.close()

    async def domain_xml(self, vm_uuid: str, inactive: bool = False) -> str:
        import libvirt

        flags = libvirt.VIR_DOMAIN_XML_INACTIVE if inactive else 0
        return await self.agent.hypervisor.call(lambda c: c.lookupByUUIDString(vm_uuid).XMLDesc(flags), "xml")


def delete_agent_queues(namespace: str, *hosts: str) -> None:
    """Delete the durable agent queues of these hosts (infra.delete_topology takes only the shared
    queues, and a test must leave nothing on the shared broker)."""
    from tests.support import infra

    topology = Topology(namespace)
    with kombu.Connection(infra.BROKER_URL) as conn:
        channel = conn.channel()
        for host in hosts:
            channel.queue_delete(topology.agent_queue(host).name)
        channel.close()


def libvirt_test_uri(directory: Path) -> str:
    node = directory / "libvirt-test-node.xml"
    node.write_text(TEST_NODE_XML)
    return f"test://{node}"


def make_image(path: Path, size: str = "64M") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sh("qemu-img", "create", "-q", "-f", "qcow2", str(path), size)
    return path


class TcpRelay:
    """Forwards TCP connections from ``listen`` to ``target``, each in two threads: how an agent in
    a namespace reaches the broker, which listens on 127.0.0.1 of the root namespace only (the
    shared broker's configuration is not ours to change). For the agent it is the broker's address
    on its network, as a real host's would be."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int]) -> None:
        import socket
        import threading

        self.target = target
        self.server = socket.create_server(listen, reuse_port=False)
        self.closed = False
        self._sockets: list[Any] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket
        import threading

        while not self.closed:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: Any, dest: Any) -> None:
        try:
            while data := source.recv(65536):
                dest.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dest.shutdown(2)

    def close(self) -> None:
        self.closed = True
        self.server.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()


def _shadow_with_root_password(password: str) -> str:
    hashed = subprocess.run(
        ["openssl", "passwd", "-6", "-stdin"], input=password, capture_output=True, text=True, check=True
    ).stdout.strip()
    lines = []
    for line in Path("/etc/shadow").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == "root":
            fields[1] = hashed
        lines.append(":".join(fields))
    return "\n".join(lines) + "\n"


class FakeKvmHost:
    """A "KVM host" for deployment tests: a network namespace joined to the root namespace by a
    veth pair (link-local /30 chosen here), with its own sshd on its address (own host key, an
    authorized key made here, password login enabled), and a relay to the broker on the root side
    of the veth. Namespaces share the filesystem, so the host gets its own install directory.

    ``start_sshd(password=...)`` gives root that password for this sshd only: sshd (and every
    session it starts) sees a copy of /etc/shadow bound over the real one in a mount namespace of
    its own (``ip netns exec`` makes one, and mounts in it never reach the machine's)."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.ns = Netns("rsdh")
        self.veth = f"rsd{self.ns.name[-8:]}"
        third = 200 + int(self.ns.name[-2:], 16) % 50
        fourth = 4 * (int(self.ns.name[-4:-2], 16) % 60)
        self.root_ip = f"169.254.{third}.{fourth + 1}"
        self.ip = f"169.254.{third}.{fourth + 2}"
        self.agent_root = base / "agent"
        self.sshd: subprocess.Popen[bytes] | None = None
        self.relay: TcpRelay | None = None
        self.relay_url: str | None = None  # the broker as the host reaches it, once relayed
        try:
            sh("ip", "link", "add", self.veth, "type", "veth", "peer", "name", "eth0", "netns", self.ns.name)
            sh("ip", "addr", "add", f"{self.root_ip}/30", "dev", self.veth)
            sh("ip", "link", "set", self.veth, "up")
            self.ns.ip("addr", "add", f"{self.ip}/30", "dev", "eth0")
            self.ns.ip("link", "set", "eth0", "up")
        except BaseException:
            self.close()  # nothing left behind by a failed set-up
            raise

    def start_sshd(self, password: str | None = None) -> None:
        ssh = self.base / "ssh"
        ssh.mkdir(parents=True, exist_ok=True)
        for name in ("host_key", "client_key"):
            if not (ssh / name).exists():
                sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(ssh / name))
        (ssh / "authorized_keys").write_text((ssh / "client_key.pub").read_text())
        config = ssh / "sshd_config"
        config.write_text(
            "\n".join(
                [
                    f"ListenAddress {self.ip}",
                    "Port 22",
                    f"HostKey {ssh / 'host_key'}",
                    f"PidFile {ssh / 'sshd.pid'}",
                    f"AuthorizedKeysFile {ssh / 'authorized_keys'}",
                    "PermitRootLogin yes",
                    "PasswordAuthentication yes",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    "StrictModes no",
                    "PrintMotd no",
                    "Subsystem sftp internal-sftp",
                    "",
                ]
            )
        )
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory
        sshd = ["/usr/sbin/sshd", "-D", "-e", "-f", str(config)]
        if password is not None:
            shadow = ssh / "shadow"
            shadow.touch(mode=0o600)
            shadow.write_text(_shadow_with_root_password(password))
            bind = 'mount --bind "$1" /etc/shadow && shift && exec "$@"'
            sshd = ["sh", "-c", bind, "sh", str(shadow), *sshd]
        self.sshd = subprocess.Popen(
            ["ip", "netns", "exec", self.ns.name, *sshd],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        wait_until(lambda: self._port_open(22) or self.sshd.poll() is not None, 20, "sshd to listen")
        if self.sshd.poll() is not None:
            raise AssertionError(
                f"sshd exited: {self.sshd.stderr.read().decode() if self.sshd.stderr else ''}"
            )

    def _port_open(self, port: int) -> bool:
        import socket

        try:
            socket.create_connection((self.ip, port), timeout=0.5).close()
            return True
        except OSError:
            return False

    @property
    def client_key(self) -> str:
        return (self.base / "ssh" / "client_key").read_text()

    def start_broker_relay(self, broker: tuple[str, int]) -> str:
        self.relay = TcpRelay((self.root_ip, broker[1]), broker)
        self.relay_url = f"amqp://{self.root_ip}:{broker[1]}/"
        return self.relay_url

    def agent_pid(self) -> int | None:
        try:
            return int((self.agent_root / "run" / "agent.pid").read_text())
        except (FileNotFoundError, ValueError):
            return None

    def close(self) -> None:
        pid = self.agent_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        if self.sshd is not None and self.sshd.poll() is None:
            self.sshd.kill()
            self.sshd.wait(10)
        if self.relay is not None:
            self.relay.close()
        self.ns.close()
        sh("ip", "link", "del", self.veth, check=False)


# ---------------------------------------------------------------------- hosts for live migration


class LibvirtHost:
    """A KVM host of its own on one machine, for migration tests: a network namespace with ``eth0``
    on a LAN, and a libvirtd (with its virtlogd) whose state is private to it.

    libvirt refuses to migrate to a host with its own host UUID, and two daemons must not share
    ``/run/libvirt`` (sockets, pid and state files), ``/var/lib/libvirt`` (per-domain directories),
    ``/etc/libvirt`` (persistent definitions: the destination writes the file the source then
    deletes), ``/var/cache/libvirt`` or ``/var/log/libvirt``. So the daemons run in a mount
    namespace of their own (the one ``ip netns exec`` makes) where directories under ``root`` are
    bound over those paths. ``root/etc`` has the machine's configuration files (``qemu.conf``...)
    but none of its domains, and a ``libvirtd.conf`` of its own: a fresh ``host_uuid`` and a TCP
    listener without authentication, ``tcp_uri``, which peers migrate to. The rest of the
    filesystem is the machine's: every host sees the same files at the same paths, which is shared
    storage. The host's agent talks to its libvirtd on its UNIX socket, ``uri``."""

    def __init__(self, root: Path, ns: Netns, address: str) -> None:
        self.root = root
        self.ns = ns
        self.address = address
        self.host_uuid = str(uuidlib.uuid4())  # libvirt's, not ringstack's

    @property
    def uri(self) -> str:
        return f"qemu+unix:///system?socket={self.root / 'run/libvirt/libvirt-sock'}"

    @property
    def tcp_uri(self) -> str:
        return f"qemu+tcp://{self.address}/system"

    def start(self, capabilities: Path | None = None) -> None:
        """Start the daemons; ``capabilities``: a directory of libvirt's QEMU capability cache to
        start from (probing QEMU takes libvirtd seconds; a stale cache is probed again anyway)."""
        import shutil

        from tests.system.guest import _kvm_node

        private = {
            "run": "/run",
            "lib": "/var/lib/libvirt",
            "cache": "/var/cache/libvirt",
            "log": "/var/log/libvirt",
        }
        for name in private:
            (self.root / name).mkdir(parents=True)
        (self.root / "etc").mkdir()
        for conf in Path("/etc/libvirt").glob("*.conf"):
            shutil.copy2(conf, self.root / "etc" / conf.name)
        if capabilities is not None and capabilities.is_dir():
            shutil.copytree(capabilities, self.capabilities)
        # Written whole, not appended to: none of the machine's settings may win over these.
        (self.root / "etc/libvirtd.conf").write_text(
            f'host_uuid = "{self.host_uuid}"\nlisten_tcp = 1\nlisten_tls = 0\nauth_tcp = "none"\n'
        )
        mounts = [(self.root / name, path) for name, path in private.items()]
        mounts.append((self.root / "etc", "/etc/libvirt"))
        node = _kvm_node()  # see there: without it libvirt probes QEMU again on every call
        if node is not None:
            mounts.append((node, "/dev/kvm"))
        script = " && ".join(f"mount --bind {source} {target}" for source, target in mounts)
        self.ns.run("sh", "-c", f"{script} && virtlogd -d && exec libvirtd -d --listen")
        wait_until(self._answers, 60, f"libvirtd of {self.ns.name} to answer on {self.uri}", interval=0.1)

    @property
    def capabilities(self) -> Path:
        return self.root / "cache/qemu/capabilities"

    def _answers(self) -> bool:
        # libvirtd answers once its drivers are up, QEMU's capabilities probed and cached
        return sh("virsh", "-c", self.uri, "version", check=False, timeout=60).returncode == 0

    def add_uplink(self, name: str) -> None:
        """A veth pair in the host: one end is the "physical" interface of a guest L2 network."""
        self.ns.ip("link", "add", name, "type", "veth", "peer", "name", f"{name}x")

    def domain_state(self, vm_uuid: str) -> tuple[int, bool] | None:
        """What this host's libvirt itself says of the VM: (state, persistent), or None if absent."""
        import libvirt

        conn = libvirt.open(self.uri)
        try:
            try:
                dom = conn.lookupByUUIDString(vm_uuid)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    return None
                raise
            return dom.state()[0], bool(dom.isPersistent())
        finally:
            conn.close()

    def serial_pty(self, vm_uuid: str) -> str:
        """The host side of the running VM's serial console."""
        import xml.etree.ElementTree as ET

        import libvirt

        conn = libvirt.open(self.uri)
        try:
            xml = conn.lookupByUUIDString(vm_uuid).XMLDesc(0)
        finally:
            conn.close()
        source = ET.fromstring(xml).find("devices/serial/source")
        if source is None or not source.get("path"):
            raise AssertionError(f"VM {vm_uuid} has no serial pty on {self.ns.name}")
        return source.get("path", "")


class MigrationLab:
    """Hosts for migration tests (``LibvirtHost``) on one LAN: a namespace with a bridge that each
    host's ``eth0`` and a veth of the root namespace are ports of, on a link-local /24 chosen here
    (the root side is ``.254``, so an agent in this process reaches every host's libvirt by TCP, as
    an agent on a real host reaches its peers). Everything lives under ``base``; ``close`` kills
    every process of the hosts (daemons, guests) and removes it all.

    The first host starts from the QEMU capabilities a previous lab (or the machine's libvirtd)
    cached, and leaves its own for the next; the other hosts start from the first's."""

    CAPABILITIES = Path("/var/tmp/ringstack-guest/libvirt-qemu-capabilities")

    def __init__(self, base: Path, hosts: int = 2) -> None:
        import shutil

        self.base = base
        self.lan = Netns("rsml")
        self.hosts: list[LibvirtHost] = []
        self.veth = f"rsm{self.lan.name[-8:]}"
        try:
            prefix = self._free_prefix()
            self.lan.ip("link", "add", "lan", "type", "bridge")
            self.lan.ip("link", "set", "lan", "up")
            sh("ip", "link", "add", self.veth, "type", "veth", "peer", "name", "root", "netns", self.lan.name)
            self._plug("root")
            sh("ip", "addr", "add", f"{prefix}.254/24", "dev", self.veth)
            sh("ip", "link", "set", self.veth, "up")
            for i in range(1, hosts + 1):
                ns = Netns("rsmh")
                host = LibvirtHost(base / f"host{i}", ns, f"{prefix}.{i}")
                self.hosts.append(host)
                ns.ip("link", "add", "eth0", "type", "veth", "peer", "name", f"h{i}", "netns", self.lan.name)
                self._plug(f"h{i}")
                ns.ip("addr", "add", f"{host.address}/24", "dev", "eth0")
                ns.ip("link", "set", "eth0", "up")
                host.start(self._capabilities())
                if i == 1:  # renamed into place: a lab starting meanwhile sees a whole cache or none
                    fresh = self.CAPABILITIES.with_name(f".{self.CAPABILITIES.name}-{self.lan.name}")
                    shutil.copytree(host.capabilities, fresh)
                    shutil.rmtree(self.CAPABILITIES, ignore_errors=True)
                    fresh.rename(self.CAPABILITIES)
        except BaseException:
            self.close()  # nothing left behind by a failed set-up
            raise

    def _capabilities(self) -> Path | None:
        if self.hosts[1:]:
            return self.hosts[0].capabilities
        for seed in (self.CAPABILITIES, Path("/var/cache/libvirt/qemu/capabilities")):
            if seed.is_dir():
                return seed
        return None

    def _plug(self, port: str) -> None:
        self.lan.ip("link", "set", port, "master", "lan")
        self.lan.ip("link", "set", port, "up")

    @staticmethod
    def _free_prefix() -> str:
        import random

        taken = sh("ip", "-4", "route", "show").stdout
        for third in random.sample(range(150, 200), 50):
            prefix = f"169.254.{third}"
            if f"{prefix}." not in taken:
                return prefix
        raise AssertionError("no free 169.254.x.0/24 for a migration LAN")

    def close(self) -> None:
        import shutil

        for host in self.hosts:
            host.ns.close()  # kills libvirtd, virtlogd and the guests: their mounts go with them
        sh("ip", "link", "del", self.veth, check=False)
        self.lan.close()
        shutil.rmtree(self.base, ignore_errors=True)


# ---------------------------------------------------------------------- hosts added through the API


class SshLibvirtHost:
    """A ``LibvirtHost`` (started by a ``MigrationLab``) that is also reachable over SSH, so the
    management node can add it with AddKVMHost: an sshd on the host's address (own host key, a
    client key made here), running in the same network *and mount* namespace as the host's
    libvirtd. So every SSH session, the Ansible playbook and the agent it starts see the host as
    libvirtd does: its own ``/run`` (``qemu:///system`` is this host's libvirtd), its own
    ``/etc/libvirt``, and its own agent install directory bound over ``agent_root``, a path that is
    the same on every host (as ``/opt/ringstack/kvm-agent`` is on real ones) but holds each host's
    own files. Everything else is the machine's filesystem, shared by all hosts. Closed with its
    lab (``Netns.close`` kills every process of the namespace)."""

    def __init__(self, host: LibvirtHost, agent_root: Path) -> None:
        self.host = host
        self.agent_root = agent_root  # where every host's agent lives, as the playbook is told
        self.own_agent_dir = host.root / "agent"  # what this host sees there
        self.ssh_dir = host.root / "ssh"
        self.sshd: subprocess.Popen[bytes] | None = None

    @property
    def ip(self) -> str:
        return self.host.address

    def start_sshd(self) -> None:
        ssh = self.ssh_dir
        ssh.mkdir(parents=True, exist_ok=True)
        self.own_agent_dir.mkdir(mode=0o755, exist_ok=True)
        self.agent_root.mkdir(mode=0o755, parents=True, exist_ok=True)  # the mount point
        for name in ("host_key", "client_key"):
            sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(ssh / name))
        (ssh / "authorized_keys").write_text((ssh / "client_key.pub").read_text())
        config = ssh / "sshd_config"
        config.write_text(
            "\n".join(
                [
                    f"ListenAddress {self.ip}",
                    "Port 22",
                    f"HostKey {ssh / 'host_key'}",
                    f"PidFile {ssh / 'sshd.pid'}",
                    f"AuthorizedKeysFile {ssh / 'authorized_keys'}",
                    "PermitRootLogin prohibit-password",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    "StrictModes no",
                    "PrintMotd no",
                    "Subsystem sftp internal-sftp",
                    "",
                ]
            )
        )
        # libvirtd's /run is the host's own: sshd's privilege separation directory goes there.
        (self.host.root / "run/sshd").mkdir(mode=0o755, exist_ok=True)
        pid = int((self.host.root / "run/libvirtd.pid").read_text())
        script = 'mount --bind "$1" "$2" && exec /usr/sbin/sshd -D -e -f "$3"'
        args = [str(self.own_agent_dir), str(self.agent_root), str(config)]
        self.sshd = subprocess.Popen(
            ["nsenter", "-t", str(pid), "-m", "-n", "sh", "-c", script, "sh", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        wait_until(lambda: self._port_open(22) or self.sshd.poll() is not None, 20, "sshd to listen")
        if self.sshd.poll() is not None:
            raise AssertionError(
                f"sshd exited: {self.sshd.stderr.read().decode() if self.sshd.stderr else ''}"
            )

    def _port_open(self, port: int) -> bool:
        import socket

        try:
            socket.create_connection((self.ip, port), timeout=0.5).close()
            return True
        except OSError:
            return False

    @property
    def client_key(self) -> str:
        return (self.ssh_dir / "client_key").read_text()

    def agent_pid(self) -> int | None:
        try:
            return int((self.own_agent_dir / "run" / "agent.pid").read_text())
        except (FileNotFoundError, ValueError):
            return None


def console(lab: MigrationLab, vm_uuid: str) -> str:
    """The guest's serial console log so far (empty before its first start)."""
    try:
        return (lab.base / "console" / f"{vm_uuid}.log").read_text(errors="replace")
    except FileNotFoundError:
        return ""


async def echoes(lab: MigrationLab, host: LibvirtHost, vm_uuid: str, timeout: float = 30) -> None:
    """A line written to the guest's serial console on ``host`` comes back: its kernel runs there."""
    line = f"ringstack-alive-{uuidlib.uuid4().hex[:8]}"
    # Held open until the echo is seen: QEMU reads its pty only while someone is connected.
    fd = os.open(host.serial_pty(vm_uuid), os.O_RDWR | os.O_NOCTTY)
    try:
        os.write(fd, f"{line}\n".encode())
        await until(
            lambda: line in console(lab, vm_uuid),
            timeout,
            f"the guest on {host.ns.name} to echo {line}; its console:\n{console(lab, vm_uuid)[-2000:]}",
        )
    finally:
        os.close(fd)


# ---------------------------------------------------------------------- faults in a deployment


def deploy_failing_at(step: str) -> tuple[Flow[HostDeploy], ...]:
    """``mgmt.core.hostdeploy.STEPS`` with ``step`` failing after its real work is done (the worst
    case: what it made exists, and it still failed); tests monkeypatch ``STEPS`` with it."""

    def failing(flow: Flow[HostDeploy]) -> Flow[HostDeploy]:
        async def run(ctx: HostDeploy) -> None:
            await flow.run(ctx)
            raise hostdeploy.failure(step, "injected fault")

        return dataclasses.replace(flow, run=run)

    return tuple(failing(f) if f.name == step else f for f in hostdeploy.STEPS)
