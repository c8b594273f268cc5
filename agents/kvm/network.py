"""Linux bridges for L2 networks, programmed with ``ip``, the way Ansible modules are written:
read the current state, work out what differs, change only that, and check the result.

- ``L2NoVlanNetwork``: the bridge's uplink is the physical interface itself.
- ``L2VlanNetwork``: the uplink is a VLAN sub-interface ``<physical>.<vlan>`` the agent creates.
- ``L2VxlanNetwork``: the uplink is a VXLAN device ``vxlan<vni>`` over the physical interface,
  from this host's VTEP address; frames to unknown or broadcast MACs are copied to every peer VTEP
  (all-zero FDB entries), known MACs are learned from what arrives.

When the physical interface carries the host's IPv4 addresses (NoVlan), enslaving it would cut the
host off; its addresses and routes move to the bridge, as ZStack's agent does, and move back when
the bridge is deleted. A bridge is deleted only when unused: any port besides its uplink is a VM's
NIC, and the delete is refused while one is there.

With ``netns`` set every command runs as ``ip -n <netns> ...``: in tests a host is a namespace.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bus.errors import RingstackError, Sys
from schema.agent import AgentErrors, L2Spec

IFNAMSIZ = 15  # the kernel's limit on interface names
VXLAN_PORT = 4789  # IANA's; ZStack's agent uses it too

# Runs an argv and returns the finished process; a fake one in unit tests.
Runner = Callable[[list[str]], "subprocess.CompletedProcess[str]"]


def run_command(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)


def network_error(message: str, **details: object) -> RingstackError:
    return RingstackError(AgentErrors.HYPERVISOR_ERROR, message, details=details)


@dataclass
class Link:
    name: str
    kind: str | None  # bridge, vlan, veth, ... (None for plain devices)
    master: str | None
    up: bool
    vlan_id: int | None  # a VLAN's id, a VXLAN's VNI
    parent: str | None  # a VLAN's (or VXLAN's) lower device
    local: str | None = None  # a VXLAN's VTEP address


class Bridges:
    def __init__(self, netns: str | None = None, run: Runner = run_command) -> None:
        self.netns = netns
        self._run = run

    # ------------------------------------------------------------------ ip

    def ip(self, *args: str, json_out: bool = False) -> Any:
        argv = ["ip"]
        if self.netns:
            argv += ["-n", self.netns]
        if json_out:
            argv.append("-j")
        argv += list(args)
        try:
            done = self._run(argv)
        except FileNotFoundError:
            raise network_error("the ip command (iproute2) is not installed on this host") from None
        if done.returncode != 0:
            raise network_error(f"{' '.join(argv)} failed: {done.stderr.strip()}", command=" ".join(argv))
        return json.loads(done.stdout or "[]") if json_out else done.stdout

    def links(self) -> dict[str, Link]:
        links: dict[str, Link] = {}
        for raw in self.ip("-d", "link", "show", json_out=True):
            info = raw.get("linkinfo") or {}
            data = info.get("info_data") or {}
            kind = info.get("info_kind")
            links[raw["ifname"]] = Link(
                name=raw["ifname"],
                kind=kind,
                master=raw.get("master"),
                up="UP" in (raw.get("flags") or []),
                vlan_id=data.get("id") if kind in ("vlan", "vxlan") else None,
                parent=raw.get("link") or data.get("link"),
                local=data.get("local") if kind == "vxlan" else None,
            )
        return links

    def addresses(self, dev: str) -> list[str]:
        """IPv4 addresses (with prefix) on ``dev``; link-local ones included, as they are the
        host's too."""
        out = self.ip("-4", "addr", "show", "dev", dev, json_out=True)
        return [f"{a['local']}/{a['prefixlen']}" for entry in out for a in entry.get("addr_info", [])]

    def routes(self, dev: str) -> list[dict[str, Any]]:
        """Routes through ``dev`` that the kernel did not add itself (the gateway routes)."""
        out = self.ip("-4", "route", "show", "dev", dev, json_out=True)
        return [r for r in out if r.get("protocol") != "kernel"]

    # ------------------------------------------------------------------ ensure / delete

    def uplink_name(self, l2: L2Spec) -> str:
        if l2.type == "L2VxlanNetwork":
            return f"vxlan{l2.vni}"
        if l2.type == "L2VlanNetwork":
            if l2.vlan is None:
                raise RingstackError(
                    Sys.INVALID_ARGUMENT, f"L2 network {l2.uuid} is a VLAN network without a vlan"
                )
            return f"{l2.physical_interface}.{l2.vlan}"
        return l2.physical_interface

    def _check_names(self, l2: L2Spec) -> str:
        uplink = self.uplink_name(l2)
        for name in (l2.bridge_name, uplink):
            if len(name) > IFNAMSIZ or not name or any(c in name for c in "/ \t\n:"):
                raise RingstackError(
                    Sys.INVALID_ARGUMENT,
                    f"{name!r} is not a valid interface name (at most {IFNAMSIZ} characters)",
                )
        return uplink

    def ensure(self, l2: L2Spec, host_uuid: str | None = None) -> bool:
        """Make the bridge exist with its uplink; True when something changed. ``host_uuid``: the
        host this is, which picks a VXLAN's local VTEP out of its pool's."""
        uplink = self._check_names(l2)
        vtep: tuple[str, list[str]] | None = None
        if l2.type == "L2VxlanNetwork":
            try:
                vtep = l2.local_vtep(host_uuid or "")
            except ValueError as exc:
                raise RingstackError(Sys.INVALID_ARGUMENT, str(exc)) from None
        links = self.links()
        phys = links.get(l2.physical_interface)
        if phys is None:
            raise network_error(
                f"physical interface {l2.physical_interface} does not exist on this host",
                interface=l2.physical_interface,
            )
        bridge = links.get(l2.bridge_name)
        if bridge is not None and bridge.kind != "bridge":
            raise network_error(f"{l2.bridge_name} exists and is not a bridge ({bridge.kind or 'a device'})")
        changed = False
        if l2.type == "L2VlanNetwork":  # first: a kernel without 802.1Q must leave no bridge behind
            changed |= self._ensure_vlan(links, l2, uplink)
        if vtep is not None:
            changed |= self._ensure_vxlan(links, l2, uplink, vtep[0])
        if bridge is None:
            self.ip("link", "add", "name", l2.bridge_name, "type", "bridge")
            changed = True
        uplink_link = self.links()[uplink]
        if uplink_link.master not in (None, l2.bridge_name):
            raise network_error(
                f"{uplink} is already a port of bridge {uplink_link.master}; it cannot join {l2.bridge_name}",
                interface=uplink,
                bridge=uplink_link.master,
            )
        if uplink_link.master is None:
            if l2.type == "L2NoVlanNetwork":
                self._move_addresses(uplink, l2.bridge_name)
            self.ip("link", "set", uplink, "master", l2.bridge_name)
            changed = True
        for name in (l2.physical_interface, uplink, l2.bridge_name):
            if not self.links()[name].up:
                self.ip("link", "set", name, "up")
                changed = True
        if vtep is not None:
            changed |= self._ensure_flood(uplink, set(vtep[1]))
        self._check(l2, uplink)
        return changed

    def _ensure_vxlan(self, links: dict[str, Link], l2: L2Spec, uplink: str, local: str) -> bool:
        existing = links.get(uplink)
        if existing is not None:
            if existing.kind == "vxlan" and existing.vlan_id == l2.vni and existing.local == local:
                return False
            if existing.kind != "vxlan" or existing.master not in (None, l2.bridge_name):
                raise network_error(f"{uplink} exists and is not VXLAN {l2.vni} from {local}")
            self.ip("link", "del", uplink)  # ours, from another VTEP address: made again
        self.ip(
            "link", "add", uplink, "type", "vxlan", "id", str(l2.vni),
            "local", local, "dev", l2.physical_interface, "dstport", str(VXLAN_PORT),
        )  # fmt: skip
        return True

    def _ensure_flood(self, uplink: str, peers: set[str]) -> bool:
        """The all-zero FDB entries of ``uplink`` are exactly one per peer VTEP."""
        entries = self.bridge("fdb", "show", "dev", uplink, json_out=True)
        have = {e["dst"] for e in entries if e.get("mac") == "00:00:00:00:00:00" and e.get("dst")}
        for peer in sorted(peers - have):
            self.bridge("fdb", "append", "00:00:00:00:00:00", "dev", uplink, "dst", peer)
        for peer in sorted(have - peers):
            self.bridge("fdb", "del", "00:00:00:00:00:00", "dev", uplink, "dst", peer)
        return have != peers

    def bridge(self, *args: str, json_out: bool = False) -> Any:
        argv = ["bridge"]
        if self.netns:
            argv += ["-n", self.netns]
        if json_out:
            argv.append("-j")
        argv += list(args)
        done = self._run(argv)
        if done.returncode != 0:
            raise network_error(f"{' '.join(argv)} failed: {done.stderr.strip()}", command=" ".join(argv))
        return json.loads(done.stdout or "[]") if json_out else done.stdout

    def _ensure_vlan(self, links: dict[str, Link], l2: L2Spec, uplink: str) -> bool:
        existing = links.get(uplink)
        if existing is None:
            try:
                self.ip(
                    "link",
                    "add",
                    "link",
                    l2.physical_interface,
                    "name",
                    uplink,
                    "type",
                    "vlan",
                    "id",
                    str(l2.vlan),
                )
            except RingstackError as exc:
                if "Unknown device type" not in exc.message:
                    raise
                raise network_error(
                    f"this host's kernel cannot create VLAN interfaces (802.1Q); {uplink} for"
                    f" L2 network {l2.uuid} is impossible here",
                    interface=uplink,
                ) from None
            return True
        if existing.kind != "vlan" or existing.vlan_id != l2.vlan:
            raise network_error(f"{uplink} exists and is not VLAN {l2.vlan} of {l2.physical_interface}")
        return False

    def _check(self, l2: L2Spec, uplink: str) -> None:
        links = self.links()
        bridge, port = links.get(l2.bridge_name), links.get(uplink)
        if bridge is None or bridge.kind != "bridge" or port is None or port.master != l2.bridge_name:
            raise network_error(
                f"bridge {l2.bridge_name} with uplink {uplink} is not in place after ensuring it"
            )

    def ports(self, bridge: str) -> list[str]:
        return sorted(name for name, link in self.links().items() if link.master == bridge)

    def delete(self, l2: L2Spec) -> bool:
        """Remove the bridge (and a VLAN uplink) when no VM uses it; True when something changed."""
        uplink = self._check_names(l2)
        links = self.links()
        if l2.bridge_name not in links:
            return False
        others = [p for p in self.ports(l2.bridge_name) if p != uplink]
        if others:
            raise RingstackError(
                Sys.RESOURCE_IN_USE,
                f"bridge {l2.bridge_name} still has VM NICs {', '.join(others)}; it was kept",
                details={"ports": others},
            )
        if l2.type in ("L2VlanNetwork", "L2VxlanNetwork"):
            if uplink in links:
                self.ip("link", "del", uplink)
        elif uplink in links:
            self.ip("link", "set", uplink, "nomaster")
            self._move_addresses(l2.bridge_name, uplink)
        self.ip("link", "del", l2.bridge_name)
        return True

    def _move_addresses(self, source: str, dest: str) -> None:
        """Move IPv4 addresses and gateway routes from one device to another (enslaving a device
        that carries the host's address would otherwise cut the host off its network)."""
        addresses = self.addresses(source)
        routes = self.routes(source)
        if not addresses:
            return
        self.ip("link", "set", dest, "up")
        for address in addresses:
            self.ip("addr", "add", address, "dev", dest)
            self.ip("addr", "del", address, "dev", source)
        for route in routes:
            argv = ["route", "replace", route["dst"]]
            if route.get("gateway"):
                argv += ["via", route["gateway"]]
            self.ip(*argv, "dev", dest)
