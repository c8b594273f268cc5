"""VM creation throughput: many ``CreateVmInstance`` calls on many simulated hosts, 1 and 3 nodes.

Method
------
For each cluster size (``--nodes``, default 1 and 3) a fresh database and broker namespace are
made (``bench.nodes.environment``). One simulator process (``python -m agents.simulator``) serves
the agent protocol for every host, and that many real ``ringstack-ctl start`` processes are
started with the default settings. This process logs in as the admin and waits for the ring to
converge.

Then the zone is built through the API, as ``tests.support.zone.build_zone`` does (it is called
for everything but the hosts): zone, a Simulator cluster, local primary storage with room for every
root volume, a local-dir backup storage with a 1 MiB raw image, an instance offering (1 CPU,
1 GiB), an L2 network attached to the cluster and an L3 network with one range big enough for
every VM (a /16 via ``AddIpRangeByNetworkCidr``). The ``--hosts`` simulated hosts are then added
with ``AddSimulatorHost``, ``HOST_ADD_INFLIGHT`` at a time; each host has enough CPUs and memory
for its share of the VMs with room to spare (``--host-cpu``, by default 1.6 times the average
share, at least 16). The time all that takes is reported as the zone build time.

Then ``--vms`` ``CreateVmInstance`` calls (InstantStart, one NIC, the root volume only) are made
with ``--inflight`` of them in flight (default 100, like the 100 client threads of ZStack's
figures). Every call is timed from the publish to the reply. Failures are counted by error code.
Throughput is the VMs created divided by the wall time of the whole batch (first call to last
reply). The CPU time of the nodes, the simulator, this client, PostgreSQL, RabbitMQ and the rest
of the machine is measured over the batch, as in ``bench.routing``.

At the end the database is checked: the VMs by state, the jobs by state, and the hosts' used
CPUs against the running VMs; and the simulator is asked how many VMs its hosts run.

The whole of each size (start-up, zone, batch) is bounded by ``--max-seconds``. Past it no new
call is sent; calls in flight get ``GRACE_SECONDS`` more to finish and are then abandoned. The
figures are those of the calls answered, flagged ``"timedOut": true``.

Everything is removed at the end: node and simulator processes are killed, the database dropped,
the namespace's shared queues and exchanges deleted, and so are the durable
``<ns>.agent.<host>`` queues the simulator declared for each host.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import kombu

if __package__ in (None, ""):  # run as ``python bench/x.py``: make the repository importable, as -m does
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.nodes import (
    DEFAULT_BROKER_URL,
    BrokerScope,
    Client,
    CpuMeter,
    Nodes,
    Scratch,
    converge,
    environment,
    machine,
    percentile,
    progress,
)
from bus.errors import RingstackError
from tests.support.simulator import SimulatorProcess
from tests.support.zone import GiB, SimZone, build_zone, vm_request

HOST_ADD_INFLIGHT: Final = 32
GRACE_SECONDS: Final = 30.0
SAMPLE_SECONDS: Final = 5.0
PROGRESS_SECONDS: Final = 15.0
OFFERING_CPU: Final = 1
OFFERING_MEMORY: Final = GiB
ROOT_VOLUME: Final = GiB  # max(image size, 1 GiB): the image is 1 MiB
CIDR: Final = "10.64.0.0/16"
MAX_VMS: Final = 60_000  # the /16 has 65,534 addresses
MAX_HOSTS: Final = 2000  # one AMQP channel per host in the simulator; RabbitMQ's channel_max is 2047
ANCHOR: Final[dict[str, Any]] = {
    "source": "ZStack's published simulator figures, 100 client threads",
    "runs": [
        {"vms": 1000, "seconds": 103, "vms_per_s": 9.7},
        {"vms": 10000, "seconds": 23 * 60, "vms_per_s": 7.2},
    ],
}
GOAL_VMS_PER_S: Final = 50.0
CPU_GROUPS: Final = ("nodes", "simulator", "client", "postgres", "rabbitmq", "other")


# ---------------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Settings:
    vms: int
    hosts: int
    inflight: int
    sizes: list[int]
    max_seconds: float
    call_timeout: float
    host_cpu: int
    broker_url: str
    node_settings: dict[str, str]
    log_dir: Path | None

    @property
    def host_memory(self) -> int:
        return self.host_cpu * 2 * OFFERING_MEMORY

    @property
    def storage(self) -> int:
        return max(1 << 40, 2 * self.vms * ROOT_VOLUME)


def default_host_cpu(vms: int, hosts: int) -> int:
    return max(16, math.ceil(1.6 * vms / hosts))


# ---------------------------------------------------------------------------------------- one size


@dataclass
class Batch:
    """What the create phase saw."""

    requested: int
    latencies: list[float] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)
    failure_examples: dict[str, str] = field(default_factory=dict)
    sent: int = 0
    in_flight: int = 0
    abandoned: int = 0
    seconds: float = 0.0
    timeline: list[tuple[float, int, int]] = field(default_factory=list)  # (s, ok, failed)
    cpu_s: dict[str, float] = field(default_factory=dict)
    machine_busy: float = 0.0

    @property
    def answered(self) -> int:
        return len(self.latencies) + sum(self.failures.values())

    def record_failure(self, code: str, message: str) -> None:
        self.failures[code] += 1
        self.failure_examples.setdefault(code, message[:300])

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies)
        ok = len(lat)
        seconds = max(self.seconds, 1e-9)
        windows = [
            (b[1] - a[1]) / (b[0] - a[0])
            for a, b in zip(self.timeline, self.timeline[1:], strict=False)
            if b[0] > a[0]
        ]
        return {
            "requested": self.requested,
            "sent": self.sent,
            "created": ok,
            "failed": sum(self.failures.values()),
            "failures": dict(self.failures),
            "failure_examples": self.failure_examples,
            "abandoned": self.abandoned,
            "seconds": round(self.seconds, 2),
            "vms_per_s": round(ok / seconds, 2),
            "p50_ms": round(percentile(lat, 0.50) * 1000, 1) if lat else None,
            "p99_ms": round(percentile(lat, 0.99) * 1000, 1) if lat else None,
            "mean_ms": round(statistics.fmean(lat) * 1000, 1) if lat else None,
            "max_ms": round(lat[-1] * 1000, 1) if lat else None,
            "window_vms_per_s": {
                "seconds": SAMPLE_SECONDS,
                "min": round(min(windows), 1) if windows else None,
                "max": round(max(windows), 1) if windows else None,
                "first": round(windows[0], 1) if windows else None,
                "last": round(windows[-1], 1) if windows else None,
            },
            "timeline": [[round(t, 1), o, f] for t, o, f in self.timeline],
            "cpu_percent_of_one_core": {g: round(100 * s / seconds, 1) for g, s in self.cpu_s.items()},
            "cpu_ms_per_vm": {g: round(1000 * s / max(1, ok), 2) for g, s in self.cpu_s.items()},
            "machine_busy_percent": round(100 * self.machine_busy, 1),
        }


async def add_hosts(
    client: Client, zone: SimZone, settings: Settings, added: list[str], failures: Counter[str]
) -> None:
    """``AddSimulatorHost`` for every host, ``HOST_ADD_INFLIGHT`` at a time, as build_zone does."""
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < settings.hosts:
            i = next_index
            next_index += 1
            body = {
                "clusterUuid": zone.cluster,
                "name": f"host-{i}",
                "managementIp": f"127.2.{i // 250}.{i % 250 + 1}",
                "totalCpu": settings.host_cpu,
                "totalMemorySize": settings.host_memory,
            }
            try:
                reply = await client.api("AddSimulatorHost", body, timeout=120)
            except RingstackError as exc:
                failures[exc.code] += 1
                continue
            inv = reply["inventory"]
            added.append(inv["uuid"])
            if inv["status"] != "Connected":
                failures[f"status {inv['status']}"] += 1
                progress(f"  host {i} not connected: {inv.get('statusReason')}")

    await asyncio.gather(*(worker() for _ in range(min(HOST_ADD_INFLIGHT, settings.hosts))))


async def create_batch(
    client: Client, zone: SimZone, settings: Settings, stop_at: float, meter: CpuMeter
) -> Batch:
    batch = Batch(settings.vms)
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < settings.vms and time.monotonic() < stop_at:
            i = next_index
            next_index += 1
            batch.sent += 1
            batch.in_flight += 1
            started = time.perf_counter()
            try:
                await client.api(
                    "CreateVmInstance", vm_request(zone, f"vm-{i}"), timeout=settings.call_timeout
                )
            except RingstackError as exc:
                batch.record_failure(exc.code, exc.message)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # anything else a call can raise: counted by type
                batch.record_failure(type(exc).__name__, str(exc))
            else:
                batch.latencies.append(time.perf_counter() - started)
            finally:
                batch.in_flight -= 1

    t0 = time.monotonic()

    async def sampler() -> None:
        last_progress = t0
        while True:
            now = time.monotonic()
            ok, failed = len(batch.latencies), sum(batch.failures.values())
            batch.timeline.append((now - t0, ok, failed))
            if now - last_progress >= PROGRESS_SECONDS:
                last_progress = now
                progress(
                    f"  {now - t0:6.0f} s: {ok} created, {failed} failed, {batch.in_flight} in flight, "
                    f"{ok / max(1e-9, now - t0):.1f} VMs/s"
                )
            await asyncio.sleep(SAMPLE_SECONDS)

    meter.start()
    sampling = asyncio.create_task(sampler())
    workers = [asyncio.create_task(worker()) for _ in range(min(settings.inflight, settings.vms))]
    _, pending = await asyncio.wait(workers, timeout=max(0.0, stop_at - time.monotonic()) + GRACE_SECONDS)
    if pending:
        batch.abandoned = batch.in_flight
        progress(f"  past --max-seconds: abandoning {batch.abandoned} call(s) in flight")
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    batch.seconds = time.monotonic() - t0
    sampling.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await sampling
    batch.timeline.append((batch.seconds, len(batch.latencies), sum(batch.failures.values())))
    batch.cpu_s, batch.machine_busy = meter.stop()
    return batch


async def check_database(scratch: Scratch) -> dict[str, Any]:
    def read() -> dict[str, Any]:
        vms = dict(scratch.sql("SELECT state, count(*) FROM vm_instance GROUP BY state"))
        jobs = dict(scratch.sql("SELECT state, count(*) FROM job GROUP BY state"))
        mismatched = scratch.sql(
            """
            SELECT count(*) FROM host h LEFT JOIN (
                SELECT host_uuid, sum(cpu_num) AS cpu FROM vm_instance WHERE state = 'Running'
                GROUP BY host_uuid
            ) v ON v.host_uuid = h.uuid
            WHERE h.total_cpu - h.available_cpu != coalesce(v.cpu, 0)
            """
        )[0][0]
        spread = scratch.sql(
            "SELECT min(c), max(c) FROM (SELECT h.uuid, count(v.uuid) AS c FROM host h "
            "LEFT JOIN vm_instance v ON v.host_uuid = h.uuid GROUP BY h.uuid) s"
        )[0]
        return {
            "vms_by_state": {str(k): int(v) for k, v in vms.items()},
            "jobs_by_state": {str(k): int(v) for k, v in jobs.items()},
            "hosts_with_cpu_mismatch": int(mismatched),
            "vms_per_host_min_max": [spread[0], spread[1]],
        }

    return await asyncio.to_thread(read)


async def simulator_vms(client: Client) -> int | None:
    try:
        reply = await client.bus.call(
            f"{client.bus.topology.namespace}.simulator", "simulator.inventory", {}, timeout=60
        )
    except RingstackError as exc:
        progress(f"  simulator inventory failed: {exc.code} {exc.message[:200]}")
        return None
    return sum(len(h["vms"]) for h in reply["hosts"].values())


def delete_agent_queues(broker: BrokerScope, host_uuids: set[str]) -> int:
    """Delete the durable ``<ns>.agent.<host>`` queues (deleting a missing queue is a no-op)."""
    if not host_uuids:
        return 0
    with kombu.Connection(broker.url) as conn:
        channel = conn.channel()
        for uuid in host_uuids:
            channel.queue_delete(broker.topology.agent_queue(uuid).name)
        channel.close()
    return len(host_uuids)


async def one_size(n: int, settings: Settings) -> dict[str, Any]:
    began = time.monotonic()
    stop_at = began + settings.max_seconds
    result: dict[str, Any] = {"nodes": n, "timedOut": False, "error": None}
    with (
        environment(f"vm-{n}", settings.broker_url) as (scratch, broker),
        tempfile.TemporaryDirectory(prefix="bench-vm-") as tmp,
    ):
        progress(f"{n} node(s): database {scratch.name}, namespace {broker.namespace}")
        nodes = Nodes(scratch, broker, settings.node_settings)
        client = Client(broker, "vm-client")
        simulator: SimulatorProcess | None = None
        host_uuids: list[str] = []
        try:
            simulator = SimulatorProcess(broker.url, broker.namespace)
            await asyncio.to_thread(simulator.wait_ready)
            started = nodes.start(n)
            await client.start()
            await client.login()
            await converge(client, scratch, {node.uuid for node in started})
            pids = [node.proc.pid for node in started]
            result["pids"] = {"nodes": pids, "simulator": simulator.proc.pid}
            progress(f"  node pids {pids}, simulator pid {simulator.proc.pid}")

            # ---- the zone
            t_zone = time.monotonic()
            try:
                zone = await asyncio.wait_for(
                    build_zone(
                        client,
                        Path(tmp),
                        hosts=0,
                        storage=settings.storage,
                        cidr=CIDR,
                        offering_cpu=OFFERING_CPU,
                        offering_memory=OFFERING_MEMORY,
                    ),
                    timeout=max(1.0, stop_at - time.monotonic()),
                )
            except TimeoutError:
                result["timedOut"] = True
                progress("  past --max-seconds before the zone was built: no VMs created")
                return result
            host_failures: Counter[str] = Counter()
            adding = asyncio.create_task(add_hosts(client, zone, settings, host_uuids, host_failures))
            try:
                await asyncio.wait_for(asyncio.shield(adding), timeout=max(1.0, stop_at - time.monotonic()))
            except TimeoutError:
                adding.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await adding
                result["timedOut"] = True
            zone_s = time.monotonic() - t_zone
            result["zone"] = {
                "seconds": round(zone_s, 2),
                "hosts_added": len(host_uuids),
                "host_failures": dict(host_failures),
                "hosts_per_s": round(len(host_uuids) / max(1e-9, zone_s), 1),
            }
            progress(
                f"  zone built in {zone_s:.1f} s: {len(host_uuids)} host(s), failures {dict(host_failures) or 0}"
            )
            if result["timedOut"]:
                progress("  past --max-seconds while building the zone: no VMs created")
                return result

            # ---- the batch
            meter = CpuMeter(pids, simulator.proc.pid)
            batch = await create_batch(client, zone, settings, stop_at, meter)
            result["timedOut"] = batch.sent < settings.vms or batch.abandoned > 0
            result["batch"] = batch.summary()
            s = result["batch"]
            progress(
                f"  {s['created']} created in {s['seconds']:.1f} s: {s['vms_per_s']:.1f} VMs/s, "
                f"p50 {s['p50_ms']} ms, p99 {s['p99_ms']} ms, failures {s['failures'] or 0}"
                + (" (timed out: partial)" if result["timedOut"] else "")
            )
            result["check"] = await check_database(scratch)
            result["check"]["simulator_vms"] = await simulator_vms(client)
            progress(f"  check: {result['check']}")
            return result
        except Exception as exc:  # reported with whatever figures there are
            result["error"] = f"{type(exc).__name__}: {exc}"
            progress(f"  failed: {result['error']}")
            return result
        finally:
            result["total_seconds"] = round(time.monotonic() - began, 1)
            await client.close()
            if settings.log_dir is not None:
                nodes.write_logs(settings.log_dir, f"vm-{n}")
                if simulator is not None:
                    (settings.log_dir / f"vm-{n}-simulator.log").write_text("\n".join(simulator.lines) + "\n")
            nodes.close()
            if simulator is not None:
                simulator.close()
            known = set(host_uuids)
            with contextlib.suppress(Exception):
                known |= {row[0] for row in await asyncio.to_thread(scratch.sql, "SELECT uuid FROM host")}
            try:
                deleted = await asyncio.to_thread(delete_agent_queues, broker, known)
                progress(f"  deleted {deleted} agent queue(s)")
            except Exception as exc:  # cleanup goes on
                progress(f"  could not delete the agent queues: {exc}")


async def benchmark(settings: Settings) -> dict[str, Any]:
    results = [await one_size(n, settings) for n in settings.sizes]
    one_node = next((r for r in results if r["nodes"] == 1 and "batch" in r), None)
    goal: dict[str, Any] = {"vms_per_s_one_node": GOAL_VMS_PER_S, "zero_failures": True, "met": None}
    if one_node is not None:
        b = one_node["batch"]
        goal["met"] = bool(b["vms_per_s"] >= GOAL_VMS_PER_S and b["failed"] == 0 and not one_node["timedOut"])
    data: dict[str, Any] = {
        "machine": machine(settings.broker_url),
        "config": {
            "vms": settings.vms,
            "hosts": settings.hosts,
            "inflight": settings.inflight,
            "node_counts": settings.sizes,
            "max_seconds": settings.max_seconds,
            "call_timeout": settings.call_timeout,
            "host_cpu": settings.host_cpu,
            "host_memory": settings.host_memory,
            "offering": {"cpu": OFFERING_CPU, "memory": OFFERING_MEMORY, "root_volume": ROOT_VOLUME},
            "primary_storage_bytes": settings.storage,
            "cidr": CIDR,
            "host_add_inflight": HOST_ADD_INFLIGHT,
            "node_settings": settings.node_settings
            or "defaults, plus extra_services=tests.support.services:AuditService",
        },
        "results": results,
        "anchor": ANCHOR,
        "goal": goal,
    }
    with contextlib.suppress(Exception):
        data["machine"]["postgres"] = postgres_version()
    return data


def postgres_version() -> str:
    import psycopg2

    from bench.nodes import PG_ADMIN_DSN

    conn = psycopg2.connect(PG_ADMIN_DSN)
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW server_version")
            row = cur.fetchone()
            return str(row[0]) if row else "unknown"
    finally:
        conn.close()


# ---------------------------------------------------------------------------------------- reporting


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(data: dict[str, Any]) -> str:
    cfg = data["config"]
    lines = [
        f"{cfg['vms']} CreateVmInstance on {cfg['hosts']} simulated hosts ({cfg['host_cpu']} CPUs each), "
        f"{cfg['inflight']} in flight",
        "",
        f"{'nodes':>5} {'created':>8} {'failed':>6} {'VMs/s':>7} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'batch s':>8} {'zone s':>7} {'hosts':>6}  status",
        "-" * 90,
    ]
    for r in data["results"]:
        b = r.get("batch") or {}
        z = r.get("zone") or {}
        status = "error: " + r["error"] if r["error"] else ("partial (timed out)" if r["timedOut"] else "ok")
        lines.append(
            f"{r['nodes']:>5} {_fmt(b.get('created'), 'd'):>8} {_fmt(b.get('failed'), 'd'):>6} "
            f"{_fmt(b.get('vms_per_s'), '.1f'):>7} {_fmt(b.get('p50_ms'), '.0f'):>8} "
            f"{_fmt(b.get('p99_ms'), '.0f'):>8} {_fmt(b.get('seconds'), '.1f'):>8} "
            f"{_fmt(z.get('seconds'), '.1f'):>7} {_fmt(z.get('hosts_added'), 'd'):>6}  {status}"
        )
    lines += ["", "failures by code:"]
    for r in data["results"]:
        b = r.get("batch") or {}
        lines.append(f"  {r['nodes']} node(s): {b.get('failures') or 'none'}")
        for code, example in (b.get("failure_examples") or {}).items():
            lines.append(f"    {code}: {example}")
    lines += [
        "",
        f"CPU during the batch, in % of one core ({data['machine']['cpu_count']} cores), and CPU ms per VM:",
        "",
        f"{'nodes':>5} " + " ".join(f"{g:>9}" for g in CPU_GROUPS) + f" {'busy %':>7}",
        "-" * 75,
    ]
    for r in data["results"]:
        b = r.get("batch")
        if not b:
            continue
        cpu, per = b["cpu_percent_of_one_core"], b["cpu_ms_per_vm"]
        lines.append(
            f"{r['nodes']:>5} "
            + " ".join(f"{cpu[g]:>9.0f}" for g in CPU_GROUPS)
            + f" {b['machine_busy_percent']:>7.0f}"
        )
        lines.append(f"{'ms/VM':>5} " + " ".join(f"{per[g]:>9.1f}" for g in CPU_GROUPS))
    lines += ["", "checks after the batch:"]
    for r in data["results"]:
        c = r.get("check")
        if c:
            lines.append(
                f"  {r['nodes']} node(s): VMs {c['vms_by_state']}, jobs {c['jobs_by_state']}, hosts with a "
                f"CPU mismatch {c['hosts_with_cpu_mismatch']}, VMs per host {c['vms_per_host_min_max']}, "
                f"VMs on the simulator {c['simulator_vms']}"
            )
    runs = ", ".join(f"{a['vms']} VMs in {a['seconds']} s = {a['vms_per_s']}/s" for a in ANCHOR["runs"])
    goal = data["goal"]
    met = {True: "met", False: "NOT met", None: "not measured"}[goal["met"]]
    lines += [
        "",
        f"anchor ({ANCHOR['source']}): {runs}",
        f"goal >= {GOAL_VMS_PER_S:g} VMs/s with one node and 0 failures: {met}",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None = None) -> tuple[Settings, bool]:
    parser = argparse.ArgumentParser(prog="python -m bench.vm_create", description=__doc__.split("\n")[0])
    parser.add_argument("--broker-url", default=DEFAULT_BROKER_URL, help="AMQP URL (default: %(default)s)")
    parser.add_argument("--vms", type=int, default=10_000, help="VMs to create (default: %(default)s)")
    parser.add_argument("--hosts", type=int, default=1000, help="simulated hosts (default: %(default)s)")
    parser.add_argument("--inflight", type=int, default=100, help="calls in flight (default: %(default)s)")
    parser.add_argument(
        "--nodes", default="1,3", help="cluster sizes, comma-separated (default: %(default)s)"
    )
    parser.add_argument(
        "--max-seconds", type=float, default=1200.0, help="bound on each size's run (default: %(default)s)"
    )
    parser.add_argument(
        "--call-timeout", type=float, default=300.0, help="timeout of one create (default: %(default)s)"
    )
    parser.add_argument(
        "--host-cpu", type=int, default=None, help="CPUs per host (default: 1.6 x VMs/hosts, at least 16)"
    )
    parser.add_argument(
        "--node-setting",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a node setting (mgmt/config.py key), e.g. host_ping_interval=30; repeatable",
    )
    parser.add_argument("--log-dir", type=Path, default=None, help="write the node and simulator logs here")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)
    try:
        sizes = [int(s) for s in args.nodes.split(",") if s.strip()]
    except ValueError:
        parser.error("--nodes takes numbers, e.g. 1,3")
    if not sizes or any(not 1 <= n <= 8 for n in sizes):
        parser.error("--nodes: between 1 and 8 nodes each")
    if not 1 <= args.vms <= MAX_VMS:
        parser.error(f"--vms must be between 1 and {MAX_VMS}")
    if not 1 <= args.hosts <= MAX_HOSTS:
        parser.error(f"--hosts must be between 1 and {MAX_HOSTS}")
    if not 1 <= args.inflight <= 1000:
        parser.error("--inflight must be between 1 and 1000")
    if not 10 <= args.max_seconds <= 24 * 3600:
        parser.error("--max-seconds must be between 10 and 86400")
    host_cpu = args.host_cpu or default_host_cpu(args.vms, args.hosts)
    if host_cpu * args.hosts < args.vms * OFFERING_CPU or not 1 <= host_cpu <= 4096:
        parser.error("--host-cpu: the hosts need at least one CPU per VM in total, and at most 4096 each")
    node_settings: dict[str, str] = {}
    for item in args.node_setting:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"--node-setting takes KEY=VALUE, not {item!r}")
        node_settings[key.strip()] = value.strip()
    return Settings(
        vms=args.vms,
        hosts=args.hosts,
        inflight=args.inflight,
        sizes=sizes,
        max_seconds=args.max_seconds,
        call_timeout=args.call_timeout,
        host_cpu=host_cpu,
        broker_url=args.broker_url,
        node_settings=node_settings,
        log_dir=args.log_dir,
    ), bool(args.json)


def main(argv: list[str] | None = None) -> int:
    settings, as_json = parse_args(argv)
    data = asyncio.run(benchmark(settings))
    print(json.dumps(data) if as_json else table(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
