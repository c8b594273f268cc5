"""Security groups: what a member change costs, how fast a rule change reaches every host, and
how long one host takes to apply the rules of many NICs.

Method
------
Three parts, each printed as one JSON object (``--json``) or a table:

* ``members`` (one namespace host, the agent's own apply code ``agents.kvm.secgroup``): a group
  whose rule names itself as remote, on ``--host-nics`` NICs of the host; then ``--members``
  members join it in batches of ``--batch``, each batch one full-state apply, as the management
  node sends it. Reported: iptables/ebtables rules changed and restores run over all batches (the
  design says zero: members are ipset entries), set members changed, the time of each apply, and an
  independent check: ``iptables-save``/``ebtables-save`` rule lines before and after are identical.
* ``apply`` (a fresh namespace host): the rules of ``--nics`` NICs in ``--groups`` groups (three
  rules each, one naming the group itself as remote) applied at once: restores run, rules written
  and the time; then the same state again (nothing to change) and a one-rule change.
* ``fanout`` (one management node and the simulator in this process, a fresh database and broker
  namespace, as ``bench.nodes`` makes them): a zone of ``--hosts`` simulated hosts, ``--nics`` VMs
  (one NIC each) spread over them, every NIC in one group; then ``--rule-changes`` times
  ``AddSecurityGroupRule``. The call returns once every affected host's agent has applied the new
  state (the API waits for all pushes), so its latency is the time for a rule change to reach every
  host of the group's NICs: p50/p95/max reported.

Namespaces, database and broker namespace are removed at the end. Runs as ``python -m
bench.secgroup`` or ``python bench/secgroup.py`` from the repository root (root: namespaces).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
import uuid as uuidlib
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: the repository root is the import root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

if __package__ in (None, ""):  # run as ``python bench/x.py``: make the repository importable, as -m does
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agents.kvm.secgroup import SecurityGroups
from schema.agent import SecurityGroupRuleSpec, SecurityGroupSpec, VmNicSecuritySpec


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def stats(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def pct(p: float) -> float:
        return round(1000 * ordered[max(0, min(len(ordered) - 1, round(p * len(ordered)) - 1))], 2)

    return {
        "n": len(ordered),
        "p50_ms": pct(0.5),
        "p95_ms": pct(0.95),
        "max_ms": round(1000 * ordered[-1], 2),
    }


class Namespace:
    def __init__(self) -> None:
        self.name = f"rsbsg{uuidlib.uuid4().hex[:8]}"
        subprocess.run(["ip", "netns", "add", self.name], check=True)

    def run(self, *argv: str) -> str:
        return subprocess.run(
            ["ip", "netns", "exec", self.name, *argv], check=True, capture_output=True, text=True
        ).stdout

    def close(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], check=False)


def nic(i: int, groups: list[str]) -> VmNicSecuritySpec:
    return VmNicSecuritySpec(
        nic_uuid=uuidlib.uuid4().hex,
        mac=f"fa:16:3e:{(i >> 16) & 255:02x}:{(i >> 8) & 255:02x}:{i & 255:02x}",
        ips=[f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"],
        security_group_uuids=groups,
    )


def group(uuid: str, port: int) -> SecurityGroupSpec:
    return SecurityGroupSpec(
        uuid=uuid,
        rules=[
            SecurityGroupRuleSpec(type="Ingress", protocol="ICMP", remote_security_group_uuid=uuid),
            SecurityGroupRuleSpec(type="Ingress", protocol="TCP", start_port=port, end_port=port),
            SecurityGroupRuleSpec(
                type="Ingress", protocol="UDP", start_port=53, end_port=53, allowed_cidr="10.0.0.0/8"
            ),
        ],
    )


def rule_lines(ns: Namespace) -> list[str]:
    lines = ns.run("iptables-save", "-t", "filter").splitlines() + ns.run("ebtables-save").splitlines()
    return [line for line in lines if line.startswith("-A ")]


def bench_members(host_nics: int, members: int, batch: int) -> dict[str, Any]:
    ns = Namespace()
    try:
        sg = SecurityGroups(ns.name)
        g = group(uuidlib.uuid4().hex, 22)
        nics = [nic(i + 1, [g.uuid]) for i in range(host_nics)]
        ips = [n.ips[0] for n in nics]
        sg.apply(nics, [g], {g.uuid: ips})
        before = rule_lines(ns)
        rules = restores = changed_members = 0
        times: list[float] = []
        for start in range(0, members, batch):
            ips += [
                f"172.{16 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}"
                for i in range(start, min(members, start + batch))
            ]
            t0 = time.perf_counter()
            reply = sg.apply(nics, [g], {g.uuid: ips})
            times.append(time.perf_counter() - t0)
            rules += reply.rules_changed
            restores += reply.restores
            changed_members += reply.set_members_changed
        after = rule_lines(ns)
        return {
            "hostNics": host_nics,
            "membersAdded": members,
            "applies": len(times),
            "rulesChanged": rules,
            "restores": restores,
            "setMembersChanged": changed_members,
            "ruleLinesIdentical": before == after,
            "ruleLines": len(after),
            "apply": stats(times),
        }
    finally:
        ns.close()


def bench_apply(nics_n: int, groups_n: int) -> dict[str, Any]:
    ns = Namespace()
    try:
        sg = SecurityGroups(ns.name)
        groups = [group(uuidlib.uuid4().hex, 8000 + i) for i in range(groups_n)]
        nics = [nic(i + 1, [groups[i % groups_n].uuid]) for i in range(nics_n)]
        members = {g.uuid: [n.ips[0] for n in nics if g.uuid in n.security_group_uuids] for g in groups}
        t0 = time.perf_counter()
        first = sg.apply(nics, groups, members)
        t_first = time.perf_counter() - t0
        t0 = time.perf_counter()
        again = sg.apply(nics, groups, members)
        t_again = time.perf_counter() - t0
        groups[0] = SecurityGroupSpec(
            uuid=groups[0].uuid,
            rules=[
                *groups[0].rules,
                SecurityGroupRuleSpec(type="Ingress", protocol="TCP", start_port=443, end_port=443),
            ],
        )
        t0 = time.perf_counter()
        one = sg.apply(nics, groups, members)
        t_one = time.perf_counter() - t0
        return {
            "nics": nics_n,
            "groups": groups_n,
            "ruleLines": len(rule_lines(ns)),
            "first": {
                "seconds": round(t_first, 3),
                "restores": first.restores,
                "rulesChanged": first.rules_changed,
            },
            "unchanged": {"seconds": round(t_again, 3), "restores": again.restores, "changed": again.changed},
            "oneRuleAdded": {
                "seconds": round(t_one, 3),
                "restores": one.restores,
                "rulesChanged": one.rules_changed,
            },
        }
    finally:
        ns.close()


async def bench_fanout(hosts: int, nics: int, changes: int, broker_url: str) -> dict[str, Any]:
    from agents.simulator.simulator import Simulator
    from bench.nodes import Client, environment
    from bus.aio import AsyncBus
    from mgmt.config import NodeConfig
    from mgmt.node import ManagementNode
    from tests.support.zone import build_zone

    with environment("sg", broker_url) as (scratch, broker), tempfile.TemporaryDirectory() as tmp:
        topology = broker.topology
        sim_bus = AsyncBus(
            broker.url,
            topology,
            process_name=f"{broker.namespace}-sim",
            reply_exchange=topology.replies_exchange.name,
        )
        sim = Simulator(sim_bus)
        await sim.start()
        node = ManagementNode(
            NodeConfig(
                broker_url=broker.url,
                database_url=scratch.url,
                namespace=broker.namespace,
                default_call_timeout=60,
            )
        )
        await node.start()
        client = Client(broker, "client")
        await client.start()
        try:
            await client.login()
            progress(f"fanout: building a zone of {hosts} hosts")
            per_host = -(-nics // hosts) + 1
            z = await build_zone(
                client,
                Path(tmp),
                hosts=hosts,
                host_cpu=per_host,
                host_memory=per_host << 30,
                cidr="10.40.0.0/16",
            )
            progress(f"fanout: {nics} VMs")
            sem = asyncio.Semaphore(32)

            async def create(i: int) -> str:
                async with sem:
                    body = {
                        "name": f"vm{i}",
                        "instanceOfferingUuid": z.offering,
                        "imageUuid": z.image,
                        "l3NetworkUuids": [z.l3],
                        "hostUuid": z.hosts[i % hosts],
                    }
                    vm = (await client.api("CreateVmInstance", body, timeout=120))["inventory"]
                    return str(vm["vmNics"][0]["uuid"])

            nic_uuids = await asyncio.gather(*(create(i) for i in range(nics)))
            g = (await client.api("CreateSecurityGroup", {"name": "bench"}))["inventory"]["uuid"]
            await client.api(
                "AttachSecurityGroupToL3Network", {"securityGroupUuid": g, "l3NetworkUuid": z.l3}
            )
            await client.api(
                "AddVmNicToSecurityGroup", {"securityGroupUuid": g, "vmNicUuids": nic_uuids}, timeout=120
            )
            progress(f"fanout: {changes} rule changes")
            times: list[float] = []
            for i in range(changes):
                rule = {"type": "Ingress", "protocol": "TCP", "startPort": 1000 + i, "endPort": 1000 + i}
                t0 = time.perf_counter()
                await client.api(
                    "AddSecurityGroupRule", {"securityGroupUuid": g, "rules": [rule]}, timeout=120
                )
                times.append(time.perf_counter() - t0)
            told = [h for h in sim.hosts.values() if len(h.sg_rules.get(g, [])) == changes]
            return {
                "hosts": hosts,
                "nics": nics,
                "hostsWithEveryRule": len(told),
                "ruleChange": stats(times),
            }
        finally:
            await client.close()
            await node.stop()
            await sim_bus.close()
            from bench.vm_create import delete_agent_queues

            delete_agent_queues(broker, set(sim.hosts))
            import kombu

            with kombu.Connection(broker.url) as conn:
                conn.channel().queue_delete(f"{broker.namespace}.events.securitygroup")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--parts", default="members,apply,fanout")
    parser.add_argument("--host-nics", type=int, default=10)
    parser.add_argument("--members", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--nics", type=int, default=500)
    parser.add_argument("--groups", type=int, default=10)
    parser.add_argument("--hosts", type=int, default=50)
    parser.add_argument("--rule-changes", type=int, default=20)
    parser.add_argument("--broker-url", default="amqp://guest:guest@127.0.0.1:5672/")
    args = parser.parse_args(argv)
    parts = set(args.parts.split(","))
    out: dict[str, Any] = {}
    if "members" in parts:
        progress("members")
        out["members"] = bench_members(args.host_nics, args.members, args.batch)
    if "apply" in parts:
        progress("apply")
        out["apply"] = bench_apply(args.nics, args.groups)
    if "fanout" in parts:
        out["fanout"] = asyncio.run(bench_fanout(args.hosts, args.nics, args.rule_changes, args.broker_url))
    print(json.dumps(out) if args.json else json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
