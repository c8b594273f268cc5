"""Failover time: from a node's SIGKILL (or SIGSTOP) until a mutating API call on one of its resources succeeds.

Method
------
Three real ``ringstack-ctl start`` processes run with the *default* cluster settings (heartbeat
every 0.5 s, lease TTL 2 s, eviction looked at after 3 missed heartbeats; the values are read from
``mgmt.config.NodeConfig`` and printed), with the ``AuditService`` test service loaded
(``RINGSTACK_EXTRA_SERVICES``) on a fresh database. Each round:

1. wait until the ring has converged: every node reports the same epoch and members, and the
   database's ``ring_partition`` rows match the ring (``bus.ring.Ring`` built from that view);
2. the victim is the oldest node alive, so every round kills a different process; pick a random
   resource uuid the ring gives to the victim, and check it with one ``AuditedWork`` call, whose
   reply names the node that ran it;
3. sleep a random fraction of a heartbeat interval, so that the kill falls anywhere in the
   victim's heartbeat cycle; read how long the victim's lease still has to run in the database;
4. SIGKILL the victim and, at once, send ``AuditedWork(uuid, seconds=0)`` for that resource through
   the shared API queue with a long timeout (60 s). A surviving node accepts it as a durable job
   and holds it until the resource's new owner has taken over its partition; **failover time is
   kill → reply**. Meanwhile the database is polled every 10 ms for the victim's eviction
   (``management_node.state``) and for the partition's new holder (``ring_partition``);
5. start a replacement node.

Variants (``--variants``):

* ``events``: the namespace is in RabbitMQ's ``/`` vhost, where the ``rabbitmq_event_exchange``
  plugin publishes ``queue.deleted``: survivors evict the victim as soon as the broker drops its
  exclusive node queue.
* ``no-events``: the same in a temporary vhost of its own, where the plugin's exchange does not
  exist, as if the plugin were off. The call fired at the kill is routed to the victim's queue,
  finds it gone (mandatory publish returned), and that evicts the victim.
* ``no-events-idle``: no event exchange and no traffic: nothing is sent until the survivors have
  evicted the victim on their own (``misses`` heartbeats missed); then the call is sent.
* ``frozen``: the victim is SIGSTOPped instead of killed, as a machine that hangs or drops off the
  network looks: its TCP connection stays open, so the broker deletes none of its queues (the event
  exchange, on here, says nothing) and a call routed to its node queue is not returned. Survivors
  notice the missed heartbeats and evict it once its lease expired. The call is sent at the freeze
  through the shared API queue; when the broker hands it to the frozen node's API consumer, no
  survivor sees it until the broker drops that connection (AMQP heartbeat timeout, 60 s by
  default): such a round is recorded with ``gateway_frozen`` true and its reply time cut at
  ``FROZEN_CALL_TIMEOUT`` (the goal counts it as missed); so is a round whose call a survivor
  recorded only after ``HELD_CALL_S`` (the broker requeued it when it dropped the frozen connection,
  which a short AMQP heartbeat in ``--broker-url``, e.g. ``?heartbeat=2``, makes happen within
  seconds). The frozen victim is SIGKILLed once the round is measured.

Every variant gets its own database and broker namespace (or vhost), removed at the end; the nodes
are killed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import statistics
import sys
import threading
import time
import uuid as uuidlib
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final

if __package__ in (None, ""):  # run as ``python bench/x.py``: make the repository importable, as -m does
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.nodes import (
    DEFAULT_BROKER_URL,
    Client,
    Node,
    Nodes,
    Scratch,
    converge,
    environment,
    machine,
    progress,
)
from bus.ring import Ring
from mgmt.cluster.ownership import LEASE_MARGIN
from mgmt.config import NodeConfig

VARIANTS: Final = ("events", "no-events", "no-events-idle", "frozen")
DESCRIPTIONS: Final = {
    "events": "broker event exchange on; call sent at the kill",
    "no-events": "no event exchange (own vhost); call sent at the kill",
    "no-events-idle": "no event exchange, no traffic; call sent once the victim is evicted",
    "frozen": "victim SIGSTOPped (connection stays open); event exchange on; call sent at the freeze",
}
NODES: Final = 3
GOAL_SECONDS: Final = 3.0
CALL_TIMEOUT: Final = 60.0
FROZEN_CALL_TIMEOUT: Final = 15.0  # a call stuck in the frozen node's API consumer is cut here
HELD_CALL_S: Final = 1.0  # a call recorded as a job later than this after the freeze was held by the victim
POLL_INTERVAL: Final = 0.01
WATCH_TIMEOUT: Final = 60.0
DEFAULTS: Final = NodeConfig()


@dataclass(frozen=True, slots=True)
class Round:
    round: int
    victim: str
    new_owner: str
    lease_left_s: float  # the victim's lease in the database still had this long at the kill
    reply_s: float  # kill -> the reply of AuditedWork on the victim's resource
    evicted_s: float  # kill -> the victim is no longer 'alive' in management_node
    takeover_s: float  # kill -> the resource's partition is held by a survivor
    accepted_s: float | None  # kill -> a gateway recorded the call as a job (database clock)
    started_s: float | None  # kill -> the new owner started the job (database clock)
    evicted_by: str
    eviction_reason: str
    gateway_frozen: bool = False  # the call was delivered to the frozen victim's API consumer


# ---------------------------------------------------------------------------------------- one round


def owned_resource(ring: Ring, node_uuid: str) -> str:
    while True:
        candidate = uuidlib.uuid4().hex
        if ring.owner(candidate) == node_uuid:
            return candidate


def lease_left(scratch: Scratch, node_uuid: str) -> tuple[float, datetime]:
    """How long the node's lease has left by the database clock, and that clock's time."""
    rows = scratch.sql(
        "SELECT EXTRACT(EPOCH FROM lease_expires_at - clock_timestamp()), clock_timestamp() "
        "FROM management_node WHERE uuid = %s",
        node_uuid,
    )
    return float(rows[0][0]), rows[0][1]


def job_times(scratch: Scratch, resource: str, since: datetime) -> tuple[float, float]:
    """Seconds from ``since`` (database clock) until the resource's last job was created, and started."""
    rows = scratch.sql(
        "SELECT created_at, started_at FROM job WHERE resource_uuid = %s ORDER BY created_at DESC LIMIT 1",
        resource,
    )
    created, started = rows[0]
    return (created - since).total_seconds(), (started - since).total_seconds()


def watch(
    scratch: Scratch, victim: str, partition: int, timeout: float, on_evicted: threading.Event
) -> tuple[float, float, str]:
    """Poll the database: (monotonic time of eviction, of takeover, new holder of the partition)."""
    evicted = taken = 0.0
    holder = ""
    deadline = time.monotonic() + timeout
    conn = scratch.connect()
    try:
        with conn.cursor() as cur:
            while time.monotonic() < deadline and not (evicted and taken):
                cur.execute(
                    "SELECT (SELECT state FROM management_node WHERE uuid = %s), "
                    "(SELECT owner_node_uuid FROM ring_partition WHERE partition = %s)",
                    (victim, partition),
                )
                state, owner = cur.fetchone() or (None, None)
                now = time.monotonic()
                if not evicted and state != "alive":
                    evicted = now
                    on_evicted.set()
                if not taken and owner not in (None, victim):
                    taken, holder = now, str(owner)
                time.sleep(POLL_INTERVAL)
    finally:
        conn.close()
    if not (evicted and taken):
        raise RuntimeError(f"no eviction or takeover of {victim[:8]} within {timeout} s")
    return evicted, taken, holder


async def timed_call(
    client: Client, resource: str, timeout: float = CALL_TIMEOUT
) -> tuple[float, dict[str, Any]]:
    reply = await client.api("AuditedWork", {"uuid": resource, "seconds": 0}, timeout=timeout)
    return time.monotonic(), reply


def freeze(node: Node) -> float:
    """SIGSTOP; the monotonic time just before the signal was sent (the node counts as gone)."""
    at = time.monotonic()
    node.proc.send_signal(signal.SIGSTOP)
    node.killed_at = at
    return at


def job_count(scratch: Scratch, resource: str) -> int:
    return int(scratch.sql("SELECT count(*) FROM job WHERE resource_uuid = %s", resource)[0][0])


def eviction_line(survivors: list[Node], victim: str, since: float) -> tuple[str, str]:
    """Which survivor evicted the victim, and the reason it logged."""
    needle = f"evicted node {victim}: "
    found = [(ln.at, node.short, ln.text) for node in survivors for ln in node.lines_since(since, needle)]
    if not found:
        return "", "(no survivor logged the eviction)"
    _, who, text = min(found)
    return who, text.split(needle, 1)[1]


async def one_round(
    number: int, variant: str, client: Client, nodes: Nodes, scratch: Scratch, rng: random.Random
) -> Round:
    alive = nodes.alive
    ring = await converge(client, scratch, {n.uuid for n in alive})
    victim = alive[0]
    survivors = alive[1:]
    resource = owned_resource(ring, victim.uuid)
    warm = await client.api("AuditedWork", {"uuid": resource, "seconds": 0})
    if warm["nodeUuid"] != victim.uuid:
        raise RuntimeError(f"{resource} ran on {warm['nodeUuid']}, but the ring gives it to {victim.uuid}")
    await asyncio.sleep(rng.uniform(0, DEFAULTS.heartbeat_interval))

    jobs_before = await asyncio.to_thread(job_count, scratch, resource)
    left, db_clock = await asyncio.to_thread(lease_left, scratch, victim.uuid)
    read_at = time.monotonic()
    killed = freeze(victim) if variant == "frozen" else victim.kill()
    left -= killed - read_at
    killed_db = db_clock + timedelta(seconds=killed - read_at)
    on_evicted = threading.Event()
    watcher = asyncio.create_task(
        asyncio.to_thread(watch, scratch, victim.uuid, ring.partition(resource), WATCH_TIMEOUT, on_evicted)
    )
    if variant == "no-events-idle":
        await asyncio.to_thread(on_evicted.wait, WATCH_TIMEOUT)
    gateway_frozen = False
    if variant == "frozen":
        try:
            replied, reply = await timed_call(client, resource, FROZEN_CALL_TIMEOUT)
        except Exception:
            # No survivor recorded the call as a job: the broker gave it to the frozen API consumer.
            if await asyncio.to_thread(job_count, scratch, resource) != jobs_before:
                raise
            gateway_frozen = True
            replied, reply = killed + FROZEN_CALL_TIMEOUT, {"nodeUuid": None}
        evicted, taken, holder = await watcher
        victim.proc.send_signal(signal.SIGKILL)  # frees the stuck call; the next round starts clean
    else:
        replied, reply = await timed_call(client, resource)
        evicted, taken, holder = await watcher
    await asyncio.to_thread(victim.proc.wait, 10)
    if gateway_frozen:
        pass
    elif reply["nodeUuid"] != holder:
        raise RuntimeError(f"the reply came from {reply['nodeUuid']}, the partition is held by {holder}")
    by, reason = eviction_line(survivors, victim.uuid, killed)
    if gateway_frozen:
        accepted = started = None
    else:
        accepted, started = await asyncio.to_thread(job_times, scratch, resource, killed_db)
        accepted, started = round(accepted, 3), round(started, 3)
        # A survivor records a call within ~0.1 s; one recorded later sat in the frozen node's API
        # consumer until the broker dropped its connection (short AMQP heartbeat in --broker-url).
        gateway_frozen = variant == "frozen" and accepted > HELD_CALL_S
    return Round(
        round=number,
        victim=victim.short,
        new_owner=holder[:8],
        lease_left_s=round(left, 3),
        reply_s=round(replied - killed, 3),
        evicted_s=round(evicted - killed, 3),
        takeover_s=round(taken - killed, 3),
        accepted_s=accepted,
        started_s=started,
        evicted_by=by,
        eviction_reason=reason,
        gateway_frozen=gateway_frozen,
    )


# ---------------------------------------------------------------------------------------- a variant


def spread(values: list[float]) -> dict[str, float]:
    return {
        "min": round(min(values), 3),
        "median": round(statistics.median(values), 3),
        "max": round(max(values), 3),
    }


async def run_variant(
    variant: str, rounds: int, broker_url: str, log_dir: Path | None, seed: int
) -> dict[str, Any]:
    rng = random.Random(seed)
    events_on = variant in ("events", "frozen")
    own_vhost = not events_on
    with environment(f"fo-{variant}", broker_url, own_vhost=own_vhost) as (scratch, broker):
        progress(
            f"{variant}: database {scratch.name}, namespace {broker.namespace}, vhost {broker.vhost or '/'}"
        )
        nodes = Nodes(scratch, broker)
        client = Client(broker, "failover-client")
        results: list[Round] = []
        try:
            nodes.start(NODES)
            await client.start()
            await client.login()
            events = {bool((await client.status(n.uuid))["brokerEvents"]) for n in nodes.alive}
            if events != {events_on}:
                raise RuntimeError(f"{variant}: the nodes report brokerEvents={events}")
            for number in range(1, rounds + 1):
                result = await one_round(number, variant, client, nodes, scratch, rng)
                results.append(result)
                progress(
                    f"  round {number}: {'froze' if variant == 'frozen' else 'killed'} {result.victim}, reply after {result.reply_s:.3f} s "
                    f"(evicted {result.evicted_s:.3f} s, takeover {result.takeover_s:.3f} s, "
                    f"lease left {result.lease_left_s:.3f} s; {result.eviction_reason})"
                    + (" [call held by the frozen node's API consumer]" if result.gateway_frozen else "")
                )
                nodes.start(1)  # the replacement
        finally:
            await client.close()
            nodes.close()
            if log_dir is not None:
                nodes.write_logs(log_dir, variant)
    return {
        "variant": variant,
        "description": DESCRIPTIONS[variant],
        "broker_events": events_on,
        "gateway_frozen_rounds": sum(r.gateway_frozen for r in results),
        "rounds": [asdict(r) for r in results],
        "reply_s": spread([r.reply_s for r in results]),
        "evicted_s": spread([r.evicted_s for r in results]),
        "takeover_s": spread([r.takeover_s for r in results]),
        "lease_left_s": spread([r.lease_left_s for r in results]),
        "reply_minus_lease_left_s": spread([r.reply_s - max(r.lease_left_s, 0.0) for r in results]),
    }


async def benchmark(
    variants: list[str], rounds: int, broker_url: str, log_dir: Path | None, seed: int
) -> dict[str, Any]:
    results = []
    for i, variant in enumerate(variants):
        results.append(await run_variant(variant, rounds, broker_url, log_dir, seed + i))
    for v in results:
        v["goal_met"] = v["reply_s"]["max"] <= GOAL_SECONDS
    return {
        "machine": machine(broker_url),
        "config": {
            "nodes": NODES,
            "rounds": rounds,
            "heartbeat_interval_s": DEFAULTS.heartbeat_interval,
            "lease_ttl_s": DEFAULTS.lease_ttl,
            "heartbeat_misses": DEFAULTS.heartbeat_misses,
            "lease_margin_s": LEASE_MARGIN,
            "call_timeout_s": CALL_TIMEOUT,
            "seed": seed,
            "node_settings": "defaults (no RINGSTACK_* cluster setting is passed to the nodes)",
        },
        "variants": results,
        "goal": {
            "max_failover_s": GOAL_SECONDS,
            "judged_on": "the slowest round of each variant",
            "met": {v["variant"]: v["goal_met"] for v in results},
        },
    }


# ---------------------------------------------------------------------------------------- reporting


def triple(s: dict[str, float]) -> str:
    return f"{s['min']:5.2f} {s['median']:5.2f} {s['max']:5.2f}"


def job_in(r: dict[str, Any]) -> str:
    if r.get("gateway_frozen"):
        return "frozen"  # the call sat in the frozen node's API consumer
    return f"{r['accepted_s']:.3f}"


def table(data: dict[str, Any]) -> str:
    cfg = data["config"]
    lines = [
        f"{cfg['nodes']} nodes, default settings: heartbeat interval {cfg['heartbeat_interval_s']} s, "
        f"lease TTL {cfg['lease_ttl_s']} s, eviction after {cfg['heartbeat_misses']} missed heartbeats; "
        f"{cfg['rounds']} kills per variant",
        "seconds after the SIGKILL (SIGSTOP for frozen), min / median / max:",
        "",
        f"{'variant':<15} {'reply (failover)':>17} {'victim evicted':>17} {'partition taken':>17} "
        f"{'lease left':>17}",
        "-" * 87,
    ]
    for v in data["variants"]:
        lines.append(
            f"{v['variant']:<15} {triple(v['reply_s']):>17} {triple(v['evicted_s']):>17} "
            f"{triple(v['takeover_s']):>17} {triple(v['lease_left_s']):>17}"
        )
    lines.append("")
    lines.append(
        f"{'variant':<15} {'round':>5} {'reply s':>8} {'evicted s':>9} {'taken s':>8} {'lease s':>8} "
        f"{'job in s':>8}  eviction reason"
    )
    for v in data["variants"]:
        for r in v["rounds"]:
            lines.append(
                f"{v['variant']:<15} {r['round']:>5} {r['reply_s']:>8.3f} {r['evicted_s']:>9.3f} "
                f"{r['takeover_s']:>8.3f} {r['lease_left_s']:>8.3f} {job_in(r):>8}  {r['eviction_reason']}"
            )
    lines.append("")
    for v in data["variants"]:
        verdict = "met" if v["goal_met"] else "NOT met"
        lines.append(
            f"goal failover <= {data['goal']['max_failover_s']:g} s in every round, {v['variant']}: {verdict} "
            f"(slowest {v['reply_s']['max']:.2f} s; {v['description']})"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.failover", description=__doc__.split("\n")[0])
    parser.add_argument("--broker-url", default=DEFAULT_BROKER_URL, help="AMQP URL (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=5, help="kills per variant (default: %(default)s)")
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help="comma-separated, from %(default)s (the no-events ones need rabbitmqctl)",
    )
    parser.add_argument("--seed", type=int, default=1, help="seeds the kill timing (default: %(default)s)")
    parser.add_argument("--log-dir", type=Path, default=None, help="write every node's log here")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)
    args.variant_list = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(args.variant_list) - set(VARIANTS)
    if unknown or not args.variant_list:
        parser.error(f"--variants: choose from {', '.join(VARIANTS)}")
    if not 1 <= args.rounds <= 50:
        parser.error("--rounds must be between 1 and 50")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    data = asyncio.run(benchmark(args.variant_list, args.rounds, args.broker_url, args.log_dir, args.seed))
    print(json.dumps(data) if args.json else table(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
