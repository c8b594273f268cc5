"""What the poison-message bound costs: ``AsyncBus.call`` round trips through the API queue as it is
now (a quorum queue with a delivery limit, ``bus/topology.py``) against the classic durable queue it
was, with persistent requests as ``AsyncBus.api()`` sends them.

One server bus and one client bus in this process, on a throwaway namespace of the broker; for each
queue type the client keeps 1 and then 32 calls in flight until ``--calls`` are answered (after a
warm-up), alternating the order over ``--rounds``. Prints one JSON object: calls/s (median over
rounds) and p50/p99 latency per (queue type, in flight).

    .venv/bin/python -m bench.api_queue
    .venv/bin/python -m bench.api_queue --calls 2000 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as ``python bench/x.py``: make the repository importable, as -m does
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bus.aio import AsyncBus
from bus.envelope import Envelope
from bus.topology import QueueSpec, Topology

DEFAULT_BROKER_URL = os.environ.get("RINGSTACK_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/")


async def echo(env: Envelope) -> dict[str, Any]:
    return {"n": env.body.get("n")}


async def _drive(client: AsyncBus, queue: str, calls: int, in_flight: int) -> tuple[float, list[float]]:
    latencies: list[float] = []
    sent = 0

    async def worker() -> None:
        nonlocal sent
        while sent < calls:
            sent += 1
            t0 = time.perf_counter()
            await client.call(queue, "bench.echo", {"n": sent}, persistent=True, timeout=60)
            latencies.append(time.perf_counter() - t0)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return calls / (time.perf_counter() - started), latencies


async def run(broker_url: str, calls: int, rounds: int) -> dict[str, Any]:
    topo = Topology(f"bench{uuid.uuid4().hex[:8]}")
    api = topo.api_queue
    specs = {
        "quorum": api,
        "classic": QueueSpec(f"{api.name}.classic", durable=True, arguments={"x-dead-letter-exchange": "x"}),
    }
    server = AsyncBus(broker_url, topo, process_name=f"{topo.namespace}-server")
    client = AsyncBus(broker_url, topo, process_name=f"{topo.namespace}-client")
    await server.start()
    await client.start()
    results: dict[str, dict[str, Any]] = {}
    try:
        for spec in specs.values():
            await server.start_consumer(server.consume(spec, echo, prefetch=128))
        for spec in specs.values():
            await _drive(client, spec.name, 200, 16)  # warm-up
        per: dict[tuple[str, int], tuple[list[float], list[float]]] = {}
        for r in range(rounds):
            order = list(specs) if r % 2 == 0 else list(reversed(specs))
            for kind in order:
                for in_flight in (1, 32):
                    rate, lat = await _drive(client, specs[kind].name, calls, in_flight)
                    rates, lats = per.setdefault((kind, in_flight), ([], []))
                    rates.append(rate)
                    lats.extend(lat)
        for (kind, in_flight), (rates, lats) in per.items():
            lats.sort()
            results[f"{kind}@{in_flight}"] = {
                "calls_per_s": round(statistics.median(rates), 1),
                "p50_ms": round(lats[len(lats) // 2] * 1000, 2),
                "p99_ms": round(lats[int(len(lats) * 0.99)] * 1000, 2),
            }
    finally:
        await client.close()
        await server.close()
        cleaner = AsyncBus(broker_url, topo, process_name=f"{topo.namespace}-cleanup", declare_topology=False)
        await cleaner.start()
        try:
            assert cleaner._declarer is not None
            for spec in specs.values():
                await cleaner._declarer.queue_delete(spec.name)
        finally:
            await cleaner.close()
    return {
        "benchmark": "api_queue",
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "calls": calls,
        "rounds": rounds,
        "results": results,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--broker-url", default=DEFAULT_BROKER_URL)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.broker_url, args.calls, args.rounds)), indent=2))


if __name__ == "__main__":
    main()
