"""The broker goes away under load and comes back: nothing is stranded, nobody loses ownership.

Two node processes and a simulator process on a private RabbitMQ node (tests/support/broker.py),
a steady load of creates, queries and stop/starts, and rounds of: the broker stopped for 10 s then
started, or every connection force-closed. Afterwards every invariant holds: no VM in a
transitional state, host capacity = total - what the VMs on it hold, one IP per NIC, the volumes
in the database are the volumes on the hosts, every host runs exactly the VMs the database says,
no job pending or running, no node restarted, fenced or evicted, no partition changed hands.

``RINGSTACK_OUTAGE_ROUNDS`` (default 2: one stop, one close-all) runs more rounds.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections import Counter
from typing import Any

import pytest

from bus.errors import RingstackError
from tests.support.cluster import ClusterOfProcesses, node_status, until
from tests.support.simulator import SimulatorProcess
from tests.support.zone import build_zone, vm_request

ROUNDS = int(os.environ.get("RINGSTACK_OUTAGE_ROUNDS", "2"))
OUTAGE_SECONDS = 10.0
TRANSITIONAL = ("Starting", "Stopping", "Rebooting", "Migrating", "Destroying", "Expunging")
# What a call may answer while the broker is away (or its answer was lost with the connection).
OUTAGE_CODES = {"SYS.CONNECTION_LOST", "SYS.UNAVAILABLE", "SYS.TIMEOUT", "SYS.SHUTTING_DOWN"}
# Stop/start racing its own earlier attempt, whose reply the outage swallowed; and starts or creates
# while the hosts, unreachable during the outage, are Disconnected (until their owner pings them again).
RACE_CODES = {"VM.INVALID_STATE", "VM.NO_HOST_AVAILABLE"}
# (aiormq logs its own traceback when the broker closes a connection: the bus's business, not ours)
NEVER_IN_LOGS = (
    "fenced itself",
    "letting the lease lapse",
    "evicted node",
    "Task exception was never retrieved",
    " ERROR mgmt.",
)


@pytest.fixture
def outage_env(private_broker, database_url, namespace):
    sim = SimulatorProcess(private_broker.url, namespace).wait_ready()
    nodes = ClusterOfProcesses(
        database_url,
        namespace,
        private_broker.url,
        heartbeat_interval="1",
        lease_ttl="2.5",
        agent_timeout="30",
        host_ping_interval="2",
        stuck_scan_interval="5",
        default_call_timeout="20",
    )
    try:
        yield private_broker, nodes, sim
    finally:
        nodes.close()
        sim.close()


@pytest.fixture
async def private_client(private_broker, namespace):
    from bus.topology import Topology
    from tests.support.identity import SessionBus

    bus = SessionBus(
        private_broker.url, Topology(namespace), process_name="outage-client", default_timeout=20
    )
    await bus.start()
    try:
        yield bus
    finally:
        await bus.close()


class Load:
    """Creates, stop/starts and queries, each in a loop until stopped, counting every answer."""

    def __init__(self, client: Any, zone: Any, creates_per_round: int) -> None:
        self.client = client
        self.zone = zone
        self.creates_left = creates_per_round
        self.per_round = creates_per_round
        self.answers: Counter[str] = Counter()
        self.unexpected: list[tuple[str, BaseException]] = []
        self.running: list[str] = []
        self.stopping = asyncio.Event()
        self.progress = asyncio.Condition()
        self.tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self.tasks = [asyncio.create_task(self._creates(i)) for i in range(4)]
        self.tasks += [asyncio.create_task(self._cycles()) for _ in range(2)]
        self.tasks.append(asyncio.create_task(self._queries()))

    async def _call(self, name: str, body: dict[str, Any], timeout: float = 60) -> dict[str, Any] | None:
        try:
            reply = await self.client.api(name, body, timeout=timeout)
        except RingstackError as exc:
            self.answers[exc.code] += 1
            if exc.code not in OUTAGE_CODES | RACE_CODES:
                self.unexpected.append((name, exc))
            reply = None
        else:
            self.answers["ok"] += 1
        async with self.progress:
            self.progress.notify_all()
        return reply

    async def wait_answers(self, count: int) -> None:
        target = sum(self.answers.values()) + count
        async with self.progress:
            await asyncio.wait_for(self.progress.wait_for(lambda: sum(self.answers.values()) >= target), 120)

    def next_round(self) -> None:
        self.creates_left = self.per_round

    async def _creates(self, worker: int) -> None:
        n = 0
        while not self.stopping.is_set():
            if self.creates_left <= 0:
                await asyncio.sleep(0.2)  # this round's creates are done; cycles and queries go on
                continue
            self.creates_left -= 1
            n += 1
            reply = await self._call("CreateVmInstance", vm_request(self.zone, f"w{worker}-{n}"))
            if reply is not None:
                self.running.append(reply["inventory"]["uuid"])

    async def _cycles(self) -> None:
        while not self.stopping.is_set():
            if not self.running:
                await asyncio.sleep(0.1)
                continue
            vm = random.choice(self.running)
            await self._call("StopVmInstance", {"uuid": vm})
            await self._call("StartVmInstance", {"uuid": vm})

    async def _queries(self) -> None:
        while not self.stopping.is_set():
            await self._call("QueryVmInstance", {"count": True}, timeout=10)
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        self.stopping.set()
        await asyncio.gather(*self.tasks)


async def _recovered(client: Any, nodes: ClusterOfProcesses, started: float) -> float:
    """Seconds from ``started`` (the broker back, or the connections closed) until the API answers
    and every node answers its status again."""

    async def answers() -> bool:
        await client.api("QueryVmInstance", {"count": True}, timeout=2)
        for uuid in nodes.nodes:
            await node_status(client, uuid)
        return True

    await until(answers, 120, "the API and every node to answer after the outage")
    return time.monotonic() - started


def _check_invariants(nodes: ClusterOfProcesses, simulated: dict[str, Any]) -> dict[str, int]:
    sql = nodes.sql
    states = Counter(dict(sql("SELECT state, count(*) FROM vm_instance GROUP BY state")))
    assert not {s for s in states if s in TRANSITIONAL}, states
    held: Counter[str] = Counter()
    memory: Counter[str] = Counter()
    for host, cpu, mem in sql(
        "SELECT host_uuid, cpu_num, memory_size FROM vm_instance WHERE host_uuid IS NOT NULL "
        "AND state IN ('Running', 'Unknown')"
    ):
        held[host] += cpu
        memory[host] += mem
    for host, total, available, total_mem, available_mem in sql(
        "SELECT uuid, total_cpu, available_cpu, total_memory_size, available_memory_size FROM host"
    ):
        assert available == total - held[host], f"host {host}: CPU leaked or double-counted"
        assert available_mem == total_mem - memory[host], f"host {host}: memory leaked or double-counted"
    nics, ips = sql("SELECT (SELECT count(*) FROM vm_nic), (SELECT count(*) FROM used_ip)")[0]
    assert nics == ips, (nics, ips)
    volumes = sql("SELECT count(*) FROM volume WHERE status = 'Ready'")[0][0]
    on_hosts = sum(h["volumes"] for h in simulated["hosts"].values())
    assert sql("SELECT count(*) FROM volume WHERE status <> 'Ready'") == [(0,)]
    assert volumes == on_hosts, f"{volumes} volumes in the database, {on_hosts} on the hosts"
    running_on_hosts = {
        (host, vm) for host, h in simulated["hosts"].items() for vm, st in h["vms"].items() if st == "Running"
    }
    running_in_db = set(sql("SELECT host_uuid, uuid FROM vm_instance WHERE state = 'Running'"))
    assert running_on_hosts == running_in_db
    on_hosts_at_all = {vm for h in simulated["hosts"].values() for vm in h["vms"]}
    known = {vm for (vm,) in sql("SELECT uuid FROM vm_instance")}
    assert on_hosts_at_all <= known, f"hosts have VMs the database does not: {on_hosts_at_all - known}"
    assert sql("SELECT count(*) FROM job WHERE state IN ('pending', 'running')") == [(0,)]
    return {"vms": sum(states.values()), "running": states["Running"], "volumes": volumes}


async def test_broker_outages_under_load_strand_nothing(outage_env, private_client, tmp_path):
    broker, nodes, sim = outage_env
    client = private_client
    members = nodes.start(2)
    zone = await build_zone(client, tmp_path, hosts=20, host_cpu=16, cidr="10.50.0.0/21")

    async def ring_settled() -> list[tuple[Any, ...]] | None:
        rows = nodes.sql("SELECT partition, owner_node_uuid, token FROM ring_partition ORDER BY partition")
        statuses = [await node_status(client, u) for u in members]
        if {s["epoch"] for s in statuses} != {statuses[0]["epoch"]} or sum(
            s["partitionsHeld"] for s in statuses
        ) != len(rows):
            return None
        return rows

    partitions = await until(ring_settled, 30, "both nodes to hold their partitions")
    epoch = nodes.sql("SELECT epoch FROM cluster_meta")[0][0]

    load = Load(client, zone, creates_per_round=24)
    load.start()
    figures: list[dict[str, Any]] = []
    try:
        for n in range(ROUNDS):
            load.next_round()
            await load.wait_answers(20)  # the load is under way: calls are in flight when it goes
            kind = "stop" if n % 2 == 0 else "close-all"
            if kind == "stop":
                await asyncio.to_thread(broker.stop_app)
                await asyncio.sleep(OUTAGE_SECONDS)  # the outage itself: nothing to await but time
                back = time.monotonic()
                await asyncio.to_thread(broker.start_app)
            else:
                back = time.monotonic()
                await asyncio.to_thread(broker.close_all_connections)
            recovery = await _recovered(client, nodes, back)
            figures.append({"round": n, "kind": kind, "recoverySeconds": round(recovery, 2)})
            await load.wait_answers(20)  # and works again afterwards
    finally:
        await load.stop()

    async def quiet() -> bool:
        live = nodes.sql(
            "SELECT (SELECT count(*) FROM job WHERE state IN ('pending', 'running')), "
            "(SELECT count(*) FROM vm_instance WHERE state = ANY(%s))",
            list(TRANSITIONAL),
        )[0]
        return live == (0, 0)

    await until(quiet, 120, "every job to end and every VM to settle")
    simulated = await client.call(f"{client.topology.namespace}.simulator", "simulator.inventory", {})
    counts = _check_invariants(nodes, simulated)
    assert load.unexpected == [], load.unexpected[:5]
    assert load.answers["ok"] > 0
    # no node restarted, fenced itself, evicted another, or gave up a partition
    assert sorted(nodes.alive()) == sorted(members) and sim.proc.poll() is None
    assert (
        nodes.sql("SELECT partition, owner_node_uuid, token FROM ring_partition ORDER BY partition")
        == partitions
    )
    assert nodes.sql("SELECT epoch FROM cluster_meta")[0][0] == epoch
    for uuid in members:
        lines = nodes.nodes[uuid].lines
        bad = [i for i, line in enumerate(lines) if any(text in line for text in NEVER_IN_LOGS)]
        assert bad == [], "\n".join(lines[max(0, bad[0] - 3) : bad[0] + 25])
    settled = nodes.sql("SELECT count(*) FROM job WHERE name = 'SettleVmInstance'")[0][0]
    print(
        "OUTAGE-FIGURES "
        + json.dumps({"rounds": figures, "answers": dict(load.answers), **counts, "settleJobs": settled})
    )
