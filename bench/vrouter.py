"""Virtual-router agent: full sync at scale, one EIP on a full table, DHCP changes without restarts.

Method
------
The real agent process (``python -m agents.vrouter``) runs in a network namespace standing for the
VR (``tests.support.vrlab.VrLab``: public and guest NICs on veths, the broker reached through a
relay, the agent's own least-privilege broker user). A client in this process drives it over the
bus with ``AgentClient``, one call in flight. For each iptables backend asked for (``--firewall``):

* ``full_sync``: one ``vrouter.sync`` of ``--eips`` EIPs + ``--pfs`` port forwardings (TCP, each on
  its own VIP, a shifted single port, half with an allowed CIDR) + ``--dhcp`` DHCP entries + an
  SNAT, on an empty VR: the round trip, the agent-side time (``duration`` of the reply), and the
  ``iptables-restore`` processes it cost (from ``vrouter.facts``);
* ``per_rule``: the same NAT rules applied one ``iptables -A`` process at a time into a scratch
  namespace, for the first ``--per-rule-limit`` rules, extrapolated linearly to all of them (the
  per-call cost grows with the table, so the extrapolation flatters the per-rule way); the ratio
  to ``full_sync``'s agent-side time;
* ``eip_create``: ``--eip-creates`` EIPs created one by one on top of the full table (10,000+ rules):
  agent-side and round-trip p50/p95;
* ``dhcp_changes``: ``--dhcp-changes`` ``vrouter.dhcp.add`` calls of one entry each: p50/p95, and
  dnsmasq's pid and restart count before and after (zero restarts: entries change by SIGHUP).

Run as root: ``python -m bench.vrouter`` or ``python bench/vrouter.py`` (``--json`` for one JSON
object). Everything lives in a fresh broker namespace and fresh network namespaces, removed at the
end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as ``python bench/x.py``: make the repository importable, as -m does
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agents.vrouter import rules
from schema import vrouter as vr


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return round(1000 * ordered[min(len(ordered) - 1, int(len(ordered) * q))], 3)


def summary(samples: list[float]) -> dict[str, float]:
    return {
        "n": len(samples),
        "p50_ms": pct(samples, 0.5),
        "p95_ms": pct(samples, 0.95),
        "max_ms": pct(samples, 1.0),
    }


def vip(base: int, i: int) -> str:
    return f"{base}.{(i // 250) % 250}.{i // 62500}.{i % 250 + 1}"


def big_state(eips: int, pfs: int, dhcp: int) -> vr.VrState:
    return vr.VrState.model_validate(
        {
            "snats": [{"guestCidr": "10.9.0.0/16", "publicIp": "203.0.113.1"}],
            "eips": [
                {
                    "uuid": uuid.uuid4().hex,
                    "vipIp": f"198.18.{i // 250}.{i % 250 + 1}",
                    "guestIp": f"10.9.{i // 250}.{i % 250 + 2}",
                }
                for i in range(eips)
            ],
            "portForwardings": [
                {
                    "uuid": uuid.uuid4().hex,
                    "vipIp": f"198.19.{i // 250}.{i % 250 + 1}",
                    "protocol": "TCP",
                    "vipPortStart": 2222,
                    "vipPortEnd": 2222,
                    "privatePortStart": 22,
                    "privatePortEnd": 22,
                    "guestIp": f"10.9.{i // 250}.{i % 250 + 2}",
                    "allowedCidr": "192.0.2.0/24" if i % 2 else "0.0.0.0/0",
                }
                for i in range(pfs)
            ],
            "dhcp": [
                {
                    "mac": f"02:10:{i >> 24 & 255:02x}:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}",
                    "ip": f"10.9.{i // 250}.{i % 250 + 2}",
                    "hostname": f"vm-{i}",
                }
                for i in range(dhcp)
            ],
            "dns": {"servers": ["192.0.2.53"], "domain": "bench.example"},
        }
    )


def nics(lab: Any) -> vr.ConfigureNicsCommand:
    from tests.support.vrlab import GUEST_MAC, PUB_MAC, PUBLIC_GW

    return vr.ConfigureNicsCommand(
        host_uuid=lab.vr_uuid,
        nics=[
            vr.NicConfig(mac=PUB_MAC, role="Public", address="203.0.113.1/24", gateway=PUBLIC_GW),  # type: ignore[arg-type]
            vr.NicConfig(mac=GUEST_MAC, role="Guest", address="10.9.0.1/16"),  # type: ignore[arg-type]
        ],
    )


def per_rule(state: vr.VrState, firewall: str, limit: int) -> dict[str, Any]:
    """The NAT rules of ``state`` one ``iptables`` process each, in a scratch namespace."""
    from tests.support.netns import Netns

    desired = rules.render(state, rules.Interfaces(public="vpub", guests=("vguest",)))["nat"]
    commands = [(chain, spec) for chain, specs in desired.items() for spec in specs]
    ns = Netns("rsvb")
    try:
        for chain in desired:
            ns.run(f"iptables-{firewall}", "-t", "nat", "-N", chain)
        sample = commands[:limit]
        t = time.perf_counter()
        for chain, spec in sample:
            argv = ["ip", "netns", "exec", ns.name, f"iptables-{firewall}", "-w", "-t", "nat", "-A", chain]
            subprocess.run(argv + spec.split(), check=True, capture_output=True)
        elapsed = time.perf_counter() - t
    finally:
        ns.close()
    return {
        "rules": len(commands),
        "measured_rules": len(sample),
        "measured_s": round(elapsed, 3),
        "per_rule_ms": round(1000 * elapsed / len(sample), 3),
        "extrapolated_s": round(elapsed / len(sample) * len(commands), 2),
    }


async def measure(args: argparse.Namespace, firewall: str) -> dict[str, Any]:
    from bus.aio import AsyncBus
    from bus.topology import Topology
    from mgmt.core.agents import sync_vrouter
    from tests.support import infra
    from tests.support.vrlab import VrLab

    namespace = infra.unique("bvr")
    topology = Topology(namespace)
    client = AsyncBus(infra.BROKER_URL, topology, process_name=f"bench-vrouter-{namespace}")
    await client.start()
    tmp = Path(tempfile.mkdtemp(prefix="rs-bench-vr-"))
    lab = VrLab(tmp, namespace, infra.BROKER_URL, firewall=firewall)
    out: dict[str, Any] = {}
    try:
        await asyncio.to_thread(lab.build)
        await lab.start_agent()
        agents = lab.client(client)
        await agents.call(nics(lab), vr.ChangeReply)
        state = big_state(args.eips, args.pfs, args.dhcp)
        before_sync = await agents.call(vr.FactsCommand(host_uuid=lab.vr_uuid), vr.VrFacts)
        t = time.perf_counter()
        reply = await sync_vrouter(agents, lab.vr_uuid, state, timeout=300)
        round_trip = time.perf_counter() - t
        facts = await agents.call(vr.FactsCommand(host_uuid=lab.vr_uuid), vr.VrFacts)
        out["full_sync"] = {
            "eips": args.eips,
            "port_forwardings": args.pfs,
            "dhcp_entries": args.dhcp,
            "nat_rules": reply.counts.nat_rules,
            "agent_s": round(reply.duration, 3),
            "round_trip_s": round(round_trip, 3),
            "messages": len(vr.split_state(state)),
            "iptables_restores": facts.processes.get(f"iptables-{firewall}-restore", 0)
            - before_sync.processes.get(f"iptables-{firewall}-restore", 0),
            "iptables_calls": facts.processes.get(f"iptables-{firewall}", 0),
        }
        again = await sync_vrouter(agents, lab.vr_uuid, state, timeout=300)
        facts2 = await agents.call(vr.FactsCommand(host_uuid=lab.vr_uuid), vr.VrFacts)
        out["resync_unchanged"] = {
            "changed": again.changed,
            "agent_s": round(again.duration, 3),
            "iptables_restores": facts2.processes.get(f"iptables-{firewall}-restore", 0)
            - facts.processes.get(f"iptables-{firewall}-restore", 0),
        }
        agent_side, trips = [], []
        for i in range(args.eip_creates):
            eip = vr.Eip(
                uuid=uuid.uuid4().hex,
                vip_ip=f"198.20.{i // 250}.{i % 250 + 1}",
                guest_ip=f"10.9.200.{i % 250 + 2}",
            )  # type: ignore[arg-type]
            t = time.perf_counter()
            r = await agents.call(vr.EipCreateCommand(host_uuid=lab.vr_uuid, eip=eip), vr.ChangeReply)
            trips.append(time.perf_counter() - t)
            agent_side.append(r.duration)
        out["eip_create_on_full_table"] = {
            "rules_present": reply.counts.nat_rules,
            "agent": summary(agent_side),
            "round_trip": summary(trips),
        }
        before = await agents.call(vr.FactsCommand(host_uuid=lab.vr_uuid), vr.VrFacts)
        agent_side, trips = [], []
        for i in range(args.dhcp_changes):
            entry = vr.DhcpEntry(
                mac=f"02:20:00:00:{i >> 8:02x}:{i & 255:02x}",
                ip=f"10.9.220.{i % 250 + 2}" if i < 250 else f"10.9.{221 + i // 250}.{i % 250 + 2}",
                hostname=f"new-{i}",
            )  # type: ignore[arg-type]
            t = time.perf_counter()
            r = await agents.call(vr.DhcpAddCommand(host_uuid=lab.vr_uuid, entries=[entry]), vr.ChangeReply)
            trips.append(time.perf_counter() - t)
            agent_side.append(r.duration)
        after = await agents.call(vr.FactsCommand(host_uuid=lab.vr_uuid), vr.VrFacts)
        out["dhcp_changes"] = {
            "entries_present": after.counts.dhcp_entries,
            "agent": summary(agent_side),
            "round_trip": summary(trips),
            "dnsmasq_pid_unchanged": before.dnsmasq_pid == after.dnsmasq_pid is not None,
            "dnsmasq_restarts": after.dnsmasq_restarts - before.dnsmasq_restarts,
            "dnsmasq_reloads": after.dnsmasq_reloads - before.dnsmasq_reloads,
        }
    finally:
        await lab.close()
        await client.close()
        infra.delete_topology(namespace)
    if args.per_rule_limit > 0:
        pr = await asyncio.to_thread(per_rule, state, firewall, args.per_rule_limit)
        pr["ratio_to_full_sync"] = round(pr["extrapolated_s"] / max(out["full_sync"]["agent_s"], 1e-9), 1)
        out["per_rule"] = pr
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eips", type=int, default=5000)
    parser.add_argument("--pfs", type=int, default=5000)
    parser.add_argument("--dhcp", type=int, default=5000)
    parser.add_argument("--eip-creates", type=int, default=200)
    parser.add_argument("--dhcp-changes", type=int, default=1000)
    parser.add_argument("--per-rule-limit", type=int, default=1000, help="0: skip the per-rule comparison")
    parser.add_argument("--firewall", choices=["nft", "legacy", "both"], default="both")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("bench.vrouter needs root (network namespaces, iptables)", file=sys.stderr)
        return 2
    backends = ["nft", "legacy"] if args.firewall == "both" else [args.firewall]
    results = {fw: asyncio.run(measure(args, fw)) for fw in backends}
    machine = {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}
    report = {"machine": machine, "config": vars(args), "results": results}
    print(json.dumps(report, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
