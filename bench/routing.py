"""Routed call throughput with 1, 2 and 3 management nodes.

Method
------
For each cluster size (``--nodes``, default 1, 2, 3) a fresh database and broker namespace are
made, that many real ``ringstack-ctl start`` processes are started with the ``AuditService`` test
service loaded, and the ring is left to converge. Then one client process (this one, an
``AsyncBus``, logged in as the admin when the identity service is there) keeps ``--inflight``
calls (default 64) in flight on the shared API queue for ``--seconds`` (default 10) per API:

* ``AuditedWork(uuid=<random>, seconds=0)``: a mutating API about one resource. The node that takes
  it from the API queue (the gateway) records it as a durable ``job`` row, then runs it itself if it
  owns the resource's partition, or sends it to the owner's node queue (``ringstack.RunJob``). The
  owner claims the job and runs the handler in the resource's serial queue under the partition's
  fencing token. The handler inserts and updates an audit row in fenced transactions. Then the owner
  finishes the job and replies to the client. With n nodes, about (n-1)/n of the jobs are forwarded.
  Every call uses a new random uuid, so the load spreads over the whole ring.
* ``QueryManagementNode``: a read-only baseline. The gateway runs it itself: authentication, one
  SQL query, the reply. No job, no routing.

Each measurement is preceded by a 2-second warm-up at the same concurrency. Throughput is the
calls answered divided by the wall time of the run. Latency is each call's own round trip (p50,
p99). The CPU time the node processes used (``/proc/<pid>/stat``) and how busy the whole machine
was (``/proc/stat``) are sampled over each run. On a small machine, more nodes do not add CPUs:
the nodes, RabbitMQ, PostgreSQL and this client all share the same cores.

Everything is removed at the end: the database is dropped, the namespace's queues and exchanges
are deleted, and the nodes are killed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import uuid as uuidlib
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

if __package__ in (None, ""):  # run as ``python bench/x.py``: make the repository importable, as -m does
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.nodes import (
    DEFAULT_BROKER_URL,
    Client,
    CpuMeter,
    Nodes,
    converge,
    environment,
    machine,
    percentile,
    progress,
)
from bus.errors import RingstackError

APIS: Final = ("AuditedWork", "QueryManagementNode")
WARMUP_SECONDS: Final = 2.0
CALL_TIMEOUT: Final = 60.0

Call = Callable[[], Awaitable[dict[str, Any]]]


CPU_GROUPS: Final = ("nodes", "client", "postgres", "rabbitmq", "other")


# ---------------------------------------------------------------------------------------- measuring


@dataclass(slots=True)
class Run:
    api: str
    nodes: int
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    ran_on: Counter[str] = field(default_factory=Counter)
    cpu_s: dict[str, float] = field(default_factory=dict)
    machine_busy: float = 0.0
    partitions: dict[str, int] = field(default_factory=dict)  # node uuid -> partitions it holds

    def summary(self, inflight: int) -> dict[str, Any]:
        lat = sorted(self.latencies)
        total = sum(self.ran_on.values())
        return {
            "api": self.api,
            "nodes": self.nodes,
            "inflight": inflight,
            "calls": len(lat),
            "seconds": round(self.seconds, 3),
            "calls_per_s": round(len(lat) / self.seconds, 1),
            "p50_ms": round(percentile(lat, 0.50) * 1000, 2),
            "p99_ms": round(percentile(lat, 0.99) * 1000, 2),
            "mean_ms": round(statistics.fmean(lat) * 1000, 2),
            "errors": dict(self.errors),
            "share_per_node": [
                {"node": node[:8], "share": round(count / total, 3), "partitions": self.partitions.get(node)}
                for node, count in self.ran_on.most_common()
            ],
            "cpu_percent_of_one_core": {g: round(100 * s / self.seconds, 1) for g, s in self.cpu_s.items()},
            "node_cpu_ms_per_call": round(1000 * self.cpu_s.get("nodes", 0.0) / max(1, len(lat)), 3),
            "machine_busy_percent": round(100 * self.machine_busy, 1),
        }


async def drive(call: Call, seconds: float, inflight: int, run: Run) -> None:
    """Keep ``inflight`` calls going for ``seconds``; record every answered call in ``run``."""
    stop_at = time.perf_counter() + seconds

    async def worker() -> None:
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            try:
                reply = await call()
            except RingstackError as exc:
                run.errors[exc.code] += 1
                continue
            run.latencies.append(time.perf_counter() - started)
            if "nodeUuid" in reply:
                run.ran_on[reply["nodeUuid"]] += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(inflight)))
    run.seconds = time.perf_counter() - started


async def measure(api: str, call: Call, n: int, seconds: float, inflight: int, pids: list[int]) -> Run:
    await drive(call, WARMUP_SECONDS, inflight, Run(api, n))
    run = Run(api, n)
    meter = CpuMeter(pids)
    meter.start()
    await drive(call, seconds, inflight, run)
    run.cpu_s, run.machine_busy = meter.stop()
    return run


def callers(client: Client) -> dict[str, Call]:
    async def audited() -> dict[str, Any]:
        body = {"uuid": uuidlib.uuid4().hex, "seconds": 0}
        return await client.api("AuditedWork", body, timeout=CALL_TIMEOUT)

    async def query() -> dict[str, Any]:
        return await client.api("QueryManagementNode", {}, timeout=CALL_TIMEOUT)

    return {"AuditedWork": audited, "QueryManagementNode": query}


async def one_size(n: int, seconds: float, inflight: int, broker_url: str) -> list[dict[str, Any]]:
    with environment(f"rt-{n}", broker_url) as (scratch, broker):
        progress(f"{n} node(s): database {scratch.name}, namespace {broker.namespace}")
        nodes = Nodes(scratch, broker)
        client = Client(broker, "routing-client")
        try:
            started = nodes.start(n)
            await client.start()
            await client.login()
            await converge(client, scratch, {node.uuid for node in started})
            pids = [node.proc.pid for node in started]
            held = {node.uuid: int((await client.status(node.uuid))["partitionsHeld"]) for node in started}
            results = []
            for api, call in callers(client).items():
                run = await measure(api, call, n, seconds, inflight, pids)
                run.partitions = held
                summary = run.summary(inflight)
                results.append(summary)
                progress(
                    f"  {api:<20} {summary['calls_per_s']:8.1f} calls/s  p50 {summary['p50_ms']:7.2f} ms  "
                    f"p99 {summary['p99_ms']:7.2f} ms  errors {summary['errors'] or 0}"
                )
            jobs = dict(
                await asyncio.to_thread(scratch.sql, "SELECT state, count(*) FROM job GROUP BY state")
            )
            if set(jobs) - {"succeeded"}:
                progress(f"  warning: jobs not all succeeded: {jobs}")
            results[0]["job_states"] = {str(k): int(v) for k, v in jobs.items()}
            return results
        finally:
            await client.close()
            nodes.close()


async def benchmark(sizes: list[int], seconds: float, inflight: int, broker_url: str) -> dict[str, Any]:
    results: list[dict[str, Any]] = []
    for n in sizes:
        results.extend(await one_size(n, seconds, inflight, broker_url))
    return {
        "machine": machine(broker_url),
        "config": {
            "node_counts": sizes,
            "inflight": inflight,
            "seconds_per_run": seconds,
            "warmup_seconds": WARMUP_SECONDS,
            "apis": list(APIS),
            "node_settings": "defaults, plus extra_services=tests.support.services:AuditService",
        },
        "results": results,
        "note": (
            f"{os.cpu_count()} CPUs: the nodes, RabbitMQ, PostgreSQL and the client share them, so more "
            "nodes compete for the same cores; with n nodes about (n-1)/n of the jobs take an extra hop "
            "(RunJob to the owner's node queue)"
        ),
    }


# ---------------------------------------------------------------------------------------- reporting


def table(data: dict[str, Any]) -> str:
    cfg = data["config"]
    lines = [
        f"{cfg['inflight']} calls in flight, {cfg['seconds_per_run']:g} s per run after a "
        f"{cfg['warmup_seconds']:g} s warm-up",
        "",
        f"{'api':<20} {'nodes':>5} {'calls/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}  "
        "share of the jobs per node (partitions it holds)",
        "-" * 80,
    ]
    for r in data["results"]:
        errors = sum(r["errors"].values())
        share = " ".join(f"{s['share']:.2f} ({s['partitions']})" for s in r["share_per_node"]) or "-"
        lines.append(
            f"{r['api']:<20} {r['nodes']:>5} {r['calls_per_s']:>8.0f} {r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f} "
            f"{errors:>6}  {share}"
        )
    lines += [
        "",
        "CPU during each run, in % of one core (the machine has "
        f"{data['machine']['cpu_count']} cores), and node CPU per call:",
        "",
        f"{'api':<20} {'nodes':>5} "
        + " ".join(f"{g:>8}" for g in CPU_GROUPS)
        + f" {'busy %':>7} {'ms/call':>8}",
        "-" * 80,
    ]
    for r in data["results"]:
        cpu = r["cpu_percent_of_one_core"]
        lines.append(
            f"{r['api']:<20} {r['nodes']:>5} "
            + " ".join(f"{cpu[g]:>8.0f}" for g in CPU_GROUPS)
            + f" {r['machine_busy_percent']:>7.0f} {r['node_cpu_ms_per_call']:>8.2f}"
        )
    lines.append("")
    lines.append("note: " + data["note"])
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.routing", description=__doc__.split("\n")[0])
    parser.add_argument("--broker-url", default=DEFAULT_BROKER_URL, help="AMQP URL (default: %(default)s)")
    parser.add_argument(
        "--nodes", default="1,2,3", help="cluster sizes, comma-separated (default: %(default)s)"
    )
    parser.add_argument(
        "--seconds", type=float, default=10.0, help="length of each run (default: %(default)s)"
    )
    parser.add_argument("--inflight", type=int, default=64, help="calls in flight (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)
    try:
        args.sizes = [int(s) for s in args.nodes.split(",") if s.strip()]
    except ValueError:
        parser.error("--nodes takes numbers, e.g. 1,2,3")
    if not args.sizes or any(not 1 <= n <= 8 for n in args.sizes):
        parser.error("--nodes: between 1 and 8 nodes each")
    if not 0.5 <= args.seconds <= 120:
        parser.error("--seconds must be between 0.5 and 120")
    if not 1 <= args.inflight <= 1000:
        parser.error("--inflight must be between 1 and 1000")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    data = asyncio.run(benchmark(args.sizes, args.seconds, args.inflight, args.broker_url))
    print(json.dumps(data) if args.json else table(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
