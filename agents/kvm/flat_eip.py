"""Flat-network EIPs on a KVM host (ZStack's ``deip.py``, done as desired state): per EIP a
namespace between the public bridge and the VM's bridge that NATs the VIP to the VM's address.

    public bridge --- epo<id> | epi<id>: VIP          (namespace <netns or 'rs'>-eip-<id>)
    VM's bridge   --- ego<id> | egi<id>: VM's gateway    DNAT VIP -> guest, SNAT guest -> VIP

- Inside, ``PREROUTING -d VIP -j DNAT`` and ``POSTROUTING -s guest -j SNAT`` (one
  ``iptables-restore`` of the namespace's own table), forwarding on, default route via the public
  router when there is one; the guest's MAC is a permanent neighbour (the namespace never ARPs).
- The namespace holds the VM's gateway address toward the VM's bridge, and ebtables (chain
  ``rs-eip``) keeps it the VM's alone: only this VM's ARP reaches ``ego<id>``, ``ego<id>`` answers
  this VM only, and this VM's ARP for its gateway does not leave by the uplink (so the real router
  never answers it). Other VMs keep their real gateway.
- Both namespace ports have MACs derived from the EIP, the same on every host, so when the EIP moves
  with its VM neither the outside's nor the VM's ARP cache goes stale; a gratuitous ARP for the VIP
  follows anyway (best effort).
- An EIP whose spec is unchanged is left alone (no flow is cut); a changed one is rebuilt; one no
  longer wanted loses its namespace. Conntrack state lives in the namespace, so it goes with it.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import sys

from agents.kvm.flat import HostNetnsCommands, _write
from schema.agent import FlatEipReply, FlatEipSpec

CHAIN = "rs-eip"

# An ARP reply "<gateway> is at <our MAC>" sent unicast to the VM, so a VM that had its real
# router's MAC cached switches to the EIP at once (run in the EIP's namespace; argv: device,
# gateway IP, our MAC, guest IP, guest MAC). busybox/iputils arping cannot send unicast.
_ANNOUNCE = """
import socket, sys
dev, sip, smac, tip, tmac = sys.argv[1:]
mac = lambda m: bytes(int(x, 16) for x in m.split(":"))
ip = socket.inet_aton
frame = mac(tmac) + mac(smac) + b"\\x08\\x06" + b"\\x00\\x01\\x08\\x00\\x06\\x04\\x00\\x02"
frame += mac(smac) + ip(sip) + mac(tmac) + ip(tip)
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((dev, 0))
for _ in range(2):
    s.send(frame)
"""


def port_mac(eip_uuid: str, side: str) -> str:
    """A locally administered unicast MAC, the same for one EIP's port on every host."""
    digest = hashlib.sha1(f"{eip_uuid}/{side}".encode()).digest()
    return ":".join(f"{b:02x}" for b in (0xFA, 0xE1, *digest[:4]))


def _prefix(netmask: str) -> int:
    return ipaddress.IPv4Network(f"0.0.0.0/{netmask}").prefixlen


class FlatEip(HostNetnsCommands):
    kind = "eip"

    @staticmethod
    def _ports(eip_uuid: str) -> tuple[str, str, str, str]:
        i = eip_uuid[:8]
        return f"epo{i}", f"epi{i}", f"ego{i}", f"egi{i}"  # public host/ns ends, guest host/ns ends

    def apply(self, eips: list[FlatEipSpec]) -> FlatEipReply:
        changed = 0
        wanted = {self.namespace(e.eip_uuid): e for e in eips}
        for ns in sorted(self._namespaces() - wanted.keys()):
            self._remove(ns)
            changed += 1
        have = self._namespaces()
        masters = self._masters()
        for ns, eip in sorted(wanted.items()):
            spec = json.dumps(eip.to_wire(), sort_keys=True)
            record = self.state_dir / f"{ns}.json"
            po, _, go, _ = self._ports(eip.eip_uuid)
            intact = masters.get(po) == eip.public_bridge and masters.get(go) == eip.guest_bridge
            if ns in have and intact and record.exists() and record.read_text() == spec:
                continue
            self._remove(ns)
            self._build(ns, eip)
            _write(record, spec)
            changed += 1
        changed += self._ebtables_chain(CHAIN, self._rules(eips))
        return FlatEipReply(changed=bool(changed), eips=len(eips))

    def _masters(self) -> dict[str, str | None]:
        """The host's links and the bridge each is a port of (a bridge re-made loses its ports)."""
        links = json.loads(self._host("ip", "-j", "link", "show") or "[]")
        return {link["ifname"]: link.get("master") for link in links}

    def _build(self, ns: str, eip: FlatEipSpec) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        po, pi, go, gi = self._ports(eip.eip_uuid)
        self._exec(["ip", "netns", "add", ns])
        # Two `ip -batch` runs (the host's side, then the namespace's), not one process per step.
        host, inside = [], ["link set lo up"]
        for outer, inner, bridge, side in (
            (po, pi, eip.public_bridge, "public"),
            (go, gi, eip.guest_bridge, "guest"),
        ):
            host += [
                f"link add {outer} type veth peer name {inner} netns {ns}",
                f"link set {outer} master {bridge}",
                f"link set {outer} up",
            ]
            inside += [f"link set {inner} address {port_mac(eip.eip_uuid, side)}", f"link set {inner} up"]
        inside += [
            f"addr add {eip.vip_ip}/{_prefix(eip.vip_netmask)} dev {pi}",
            f"addr add {eip.guest_gateway}/{_prefix(eip.guest_netmask)} dev {gi}",
            f"neigh replace {eip.guest_ip} lladdr {eip.guest_mac} nud permanent dev {gi}",
        ]
        if eip.vip_gateway:
            inside.append(f"route replace default via {eip.vip_gateway} dev {pi}")
        self._host("ip", "-batch", "-", stdin="\n".join(host) + "\n")
        self._exec(["ip", "-n", ns, "-batch", "-"], stdin="\n".join(inside) + "\n")
        in_ns = ["ip", "netns", "exec", ns]
        self._exec(
            [*in_ns, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.disable_ipv6=1"]
        )
        nat = (
            "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n"
            f"-A PREROUTING -d {eip.vip_ip}/32 -j DNAT --to-destination {eip.guest_ip}\n"
            f"-A POSTROUTING -s {eip.guest_ip}/32 -j SNAT --to-source {eip.vip_ip}\n"
            "COMMIT\n"
        )
        self._exec([*in_ns, "iptables-restore"], stdin=nat)
        # Tell the public network where the VIP is now (best effort: the MAC is stable anyway),
        # and the VM that its gateway is here now.
        self._exec([*in_ns, "busybox", "arping", "-U", "-c", "1", "-I", pi, eip.vip_ip], check=False)
        gw_mac = port_mac(eip.eip_uuid, "guest")
        self._exec(
            [
                *in_ns,
                sys.executable,
                "-I",
                "-S",
                "-c",
                _ANNOUNCE,
                gi,
                eip.guest_gateway,
                gw_mac,
                eip.guest_ip,
                eip.guest_mac,
            ]
        )

    def _rules(self, eips: list[FlatEipSpec]) -> list[str]:
        rules = []
        for eip in sorted(eips, key=lambda e: e.eip_uuid):
            _, _, go, _ = self._ports(eip.eip_uuid)
            mac = eip.guest_mac
            rules += [  # in ebtables-save's own order, so an unchanged chain compares equal
                f"-p ARP -s ! {mac} -o {go} -j DROP",
                f"-p ARP -d ! {mac} -i {go} -j DROP",
                f"-p ARP -s {mac} -o {eip.guest_uplink} --arp-ip-dst {eip.guest_gateway} -j DROP",
            ]
        return [f"-A {CHAIN} {rule}" for rule in rules]

    def _remove(self, ns: str) -> None:
        i = ns.rsplit("-", 1)[-1]
        for port in (f"epo{i}", f"ego{i}"):
            self._host("ip", "link", "del", port, check=False)
        self._exec(["ip", "netns", "del", ns], check=False)
        (self.state_dir / f"{ns}.json").unlink(missing_ok=True)
