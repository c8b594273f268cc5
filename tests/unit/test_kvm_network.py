"""The bridge logic against a fake ``ip``: the VLAN steps (this machine's kernel may have no 802.1Q,
so the real test can only check the refusal there), ordering, idempotence, and refusals."""

from __future__ import annotations

import json
import subprocess

import pytest

from agents.kvm.network import Bridges
from bus.errors import RingstackError, Sys
from tests.system.kvmsupport import l2


class FakeIp:
    """Enough of iproute2's link and address handling to run Bridges against."""

    def __init__(self) -> None:
        self.links: dict[str, dict] = {"eth0": {"kind": None, "master": None, "up": True, "id": None}}
        self.addrs: dict[str, list[str]] = {"eth0": ["10.0.0.5/24"]}
        self.routes: dict[str, list[dict]] = {
            "eth0": [{"dst": "default", "gateway": "10.0.0.1", "protocol": "boot"}]
        }
        self.calls: list[list[str]] = []

    def __call__(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        args = argv[1:]
        if args[:2] == ["-n", "ns"]:
            args = args[2:]
        out = ""
        if args[:4] == ["-j", "-d", "link", "show"]:
            out = json.dumps(
                [
                    {
                        "ifname": name,
                        "flags": ["UP"] if link["up"] else [],
                        **({"master": link["master"]} if link["master"] else {}),
                        **(
                            {"linkinfo": {"info_kind": link["kind"], "info_data": {"id": link["id"]}}}
                            if link["kind"]
                            else {}
                        ),
                    }
                    for name, link in self.links.items()
                ]
            )
        elif args[:4] == ["-j", "-4", "addr", "show"]:
            dev = args[5]
            out = json.dumps(
                [
                    {
                        "addr_info": [
                            {"local": a.split("/")[0], "prefixlen": int(a.split("/")[1])}
                            for a in self.addrs.get(dev, [])
                        ]
                    }
                ]
            )
        elif args[:4] == ["-j", "-4", "route", "show"]:
            out = json.dumps(self.routes.get(args[5], []) if self.addrs.get(args[5]) else [])
        else:
            self.calls.append(args)
            self._change(args)
        return subprocess.CompletedProcess(argv, 0, out, "")

    def _change(self, args: list[str]) -> None:
        match args:
            case ["link", "add", "name", name, "type", "bridge"]:
                self.links[name] = {"kind": "bridge", "master": None, "up": False, "id": None}
            case ["link", "add", "link", _parent, "name", name, "type", "vlan", "id", vid]:
                self.links[name] = {"kind": "vlan", "master": None, "up": False, "id": int(vid)}
            case ["link", "set", name, "master", bridge]:
                self.links[name]["master"] = bridge
            case ["link", "set", name, "nomaster"]:
                self.links[name]["master"] = None
            case ["link", "set", name, "up"]:
                self.links[name]["up"] = True
            case ["link", "del", name]:
                del self.links[name]
            case ["addr", "add", address, "dev", dev]:
                self.addrs.setdefault(dev, []).append(address)
            case ["addr", "del", address, "dev", dev]:
                self.addrs[dev].remove(address)
            case ["route", "replace", dst, "via", gateway, "dev", dev]:
                self.routes.setdefault(dev, []).append({"dst": dst, "gateway": gateway})
            case _:
                raise AssertionError(f"unexpected ip {args}")


@pytest.fixture
def ip():
    return FakeIp()


def test_a_vlan_bridge_is_built_once_on_a_sub_interface(ip):
    bridges = Bridges("ns", run=ip)
    network = l2("br_v7", vlan=7)
    assert bridges.ensure(network) is True
    assert ip.calls[:2] == [
        ["link", "add", "link", "eth0", "name", "eth0.7", "type", "vlan", "id", "7"],
        ["link", "add", "name", "br_v7", "type", "bridge"],
    ]
    assert ip.links["eth0.7"]["master"] == "br_v7" and ip.links["br_v7"]["up"] and ip.links["eth0.7"]["up"]
    assert ip.addrs["eth0"] == ["10.0.0.5/24"]  # a VLAN leaves the host's address where it is
    made = len(ip.calls)
    assert bridges.ensure(network) is False and len(ip.calls) == made  # nothing to change
    assert bridges.delete(network) is True
    assert "eth0.7" not in ip.links and "br_v7" not in ip.links and "eth0" in ip.links
    assert bridges.delete(network) is False


def test_a_novlan_bridge_takes_the_hosts_address_and_gateway_and_gives_them_back(ip):
    bridges = Bridges("ns", run=ip)
    network = l2("br_eth0")
    bridges.ensure(network)
    assert ip.addrs["br_eth0"] == ["10.0.0.5/24"] and ip.addrs["eth0"] == []
    assert {"dst": "default", "gateway": "10.0.0.1"} in ip.routes["br_eth0"]
    bridges.delete(network)
    assert ip.addrs["eth0"] == ["10.0.0.5/24"] and ip.links["eth0"]["master"] is None


def test_conflicts_are_refused_not_repaired(ip):
    bridges = Bridges("ns", run=ip)
    ip.links["eth0.7"] = {"kind": "vlan", "master": None, "up": True, "id": 8}
    with pytest.raises(RingstackError) as err:
        bridges.ensure(l2("br_v7", vlan=7))
    assert "not VLAN 7" in err.value.message
    ip.links["eth0"]["master"] = "other"
    with pytest.raises(RingstackError) as err:
        bridges.ensure(l2("br_eth0"))
    assert "already a port of bridge other" in err.value.message
    ip.links["eth0"]["master"] = None
    bridges.ensure(l2("br_eth0"))
    ip.links["vnet0"] = {"kind": "tun", "master": "br_eth0", "up": True, "id": None}
    with pytest.raises(RingstackError) as err:
        bridges.delete(l2("br_eth0"))
    assert err.value.code == Sys.RESOURCE_IN_USE and err.value.details["ports"] == ["vnet0"]
