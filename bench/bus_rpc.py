"""Round trips per second of ``AsyncBus.call()`` against a raw aio-pika request/reply baseline.

Method
------
Both implementations run in the same invocation, on the same broker, with the same shape:

* a **server process** (this file run with ``--serve ringstack|raw``) that answers an echo request,
  started with ``subprocess`` and waited for through a ``READY`` line on its stdout (no sleeps);
  it stops when its stdin is closed;
* a **client** in this process that keeps a fixed number of calls in flight (1 and 64) until a fixed
  number of calls has been answered, timing every call.

``ringstack``: the server is an ``AsyncBus`` consuming ``Topology(ns).node_queue(...)`` with the
handler ``echo`` below; the client is an ``AsyncBus`` doing ``await bus.call(queue, name, {"n": i})``,
i.e. everything the bus does per call: envelope encoding and decoding, deadline, publisher confirm
with mandatory routing, reply matching, per-message task on the server, manual ack.

``raw``: the idiomatic aio-pika RPC pattern, written efficiently. The server consumes a queue on a
default channel (publisher confirms on, as aio-pika defaults) with ringstack's prefetch, decodes the
JSON request and publishes the reply to ``reply_to`` via the default exchange with the request's
``correlation_id``, then acks. The client publishes on a default channel (confirms on) to the default
exchange with ``reply_to`` set to one exclusive reply queue declared once, and resolves futures keyed
by ``correlation_id``. Bodies are orjson objects with the fields of ringstack's envelopes, so about as
large (both sizes are reported in ``--json``). Each side checks that the echoed number is the one sent.

Each run is preceded by a short warm-up per implementation. Throughput is calls divided by the wall
time of the run; latency is each call's own round trip (p50, p99). With ``--rounds R`` the levels are
run R times with the implementation order alternating, throughput is the median over rounds and the
latency percentiles pool all rounds' calls. The ratio is ringstack calls/s divided by raw calls/s.

Every name lives in a fresh namespace ``bench-<hex>``; what was declared is deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import platform
import secrets
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any, Final

import aio_pika
import orjson
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage, AbstractQueue

if __package__ in (None, ""):  # run as ``python bench/x.py``: make the repository importable, as -m does
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bus.aio import AsyncBus
from bus.envelope import Envelope
from bus.topology import Topology

DEFAULT_URL: Final = os.environ.get("RINGSTACK_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/")
IMPLS: Final = ("ringstack", "raw")
INFLIGHT_LEVELS: Final = (1, 64)
DEFAULT_CALLS: Final = {1: 1500, 64: 3000}
WARMUP_CALLS: Final = 300
WARMUP_INFLIGHT: Final = 16
GOAL_INFLIGHT: Final = 64
GOAL_RATIO: Final = 0.7
PREFETCH: Final = 256  # ringstack's default consumer prefetch; the raw server uses the same window
CALL_NAME: Final = "bench.echo"
CALL_TIMEOUT: Final = 30.0
READY_TIMEOUT: Final = 30.0
STOP_TIMEOUT: Final = 10.0
RUN_TIMEOUT: Final = 600.0
READY_LINE: Final = "READY"
SERVER_NODE: Final = "bench-server"
REPO_ROOT: Final = Path(__file__).resolve().parent.parent

Caller = Callable[[int], Awaitable[int]]


# ---------------------------------------------------------------------------------------- naming


@dataclass(frozen=True, slots=True)
class Names:
    """Every broker name one run uses, all under its own namespace."""

    namespace: str

    @property
    def topology(self) -> Topology:
        return Topology(self.namespace)

    @property
    def ringstack_queue(self) -> str:
        return self.topology.node_queue(SERVER_NODE).name

    @property
    def raw_queue(self) -> str:
        return f"{self.namespace}.raw-rpc"

    def queues(self) -> tuple[str, ...]:
        return (self.ringstack_queue, self.raw_queue)

    def exchanges(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.topology.exchanges())


def raw_request(n: int, correlation_id: str, reply_to: str) -> bytes:
    """The raw baseline's request body: the same fields, so about the size, of a ringstack request."""
    return orjson.dumps(
        {
            "id": correlation_id,
            "name": CALL_NAME,
            "kind": "call",
            "body": {"n": n},
            "reply_to": reply_to,
            "deadline": time.time() + CALL_TIMEOUT,
        }
    )


def raw_reply(n: int, correlation_id: str) -> bytes:
    """The raw baseline's reply body, shaped like a ringstack reply envelope."""
    return orjson.dumps(
        {
            "id": secrets.token_hex(16),
            "name": CALL_NAME,
            "kind": "reply",
            "body": {"n": n},
            "correlation_id": correlation_id,
        }
    )


# ---------------------------------------------------------------------------------------- servers


async def echo(env: Envelope) -> dict[str, Any]:
    return {"n": env.body.get("n")}


async def wait_for_stop() -> None:
    """Block until the parent closes our stdin (EOF)."""
    await asyncio.to_thread(sys.stdin.readline)


def announce_ready() -> None:
    print(READY_LINE, flush=True)


async def serve_ringstack(url: str, names: Names) -> None:
    bus = AsyncBus(url, names.topology, process_name=f"{names.namespace}-ringstack-server")
    await bus.start()
    try:
        consumer = bus.consume(names.topology.node_queue(SERVER_NODE), echo)
        await bus.start_consumer(consumer)
        announce_ready()
        await wait_for_stop()
    finally:
        await bus.close()


async def serve_raw(url: str, names: Names) -> None:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=PREFETCH)
        queue = await channel.declare_queue(names.raw_queue, exclusive=True)
        exchange = channel.default_exchange

        async def on_request(message: AbstractIncomingMessage) -> None:
            async with message.process(requeue=False):
                request = orjson.loads(message.body)
                reply = aio_pika.Message(
                    raw_reply(request["body"]["n"], message.correlation_id or ""),
                    content_type="application/json",
                    correlation_id=message.correlation_id,
                )
                await exchange.publish(reply, routing_key=message.reply_to or "")

        await queue.consume(on_request)
        announce_ready()
        await wait_for_stop()


async def serve(impl: str, url: str, names: Names) -> None:
    if impl == "ringstack":
        await serve_ringstack(url, names)
    else:
        await serve_raw(url, names)


@contextlib.asynccontextmanager
async def server_process(impl: str, url: str, names: Names) -> AsyncIterator[None]:
    """Run this file with ``--serve impl`` as a separate process; yield once it says READY."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.bus_rpc",
        "--serve",
        impl,
        "--namespace",
        names.namespace,
        "--broker-url",
        url,
        cwd=REPO_ROOT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), READY_TIMEOUT)
        if line.decode().strip() != READY_LINE:
            raise RuntimeError(f"the {impl} server did not start (exit code {await proc.wait()})")
        yield
    finally:
        proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), STOP_TIMEOUT)
        except TimeoutError:
            proc.kill()
            await proc.wait()


# ---------------------------------------------------------------------------------------- clients


class RawClient:
    """The idiomatic aio-pika RPC client: one exclusive reply queue, futures by correlation id."""

    def __init__(self, url: str, queue: str) -> None:
        self.url = url
        self.queue = queue
        self.futures: dict[str, asyncio.Future[AbstractIncomingMessage]] = {}
        self.connection: AbstractConnection | None = None
        self.channel: AbstractChannel | None = None
        self.reply_queue: AbstractQueue | None = None

    async def start(self) -> None:
        self.connection = await aio_pika.connect(self.url)
        self.channel = await self.connection.channel()
        self.reply_queue = await self.channel.declare_queue(exclusive=True)
        await self.reply_queue.consume(self.on_reply, no_ack=True)

    async def close(self) -> None:
        if self.connection is not None:
            await self.connection.close()

    async def on_reply(self, message: AbstractIncomingMessage) -> None:
        fut = self.futures.pop(message.correlation_id or "", None)
        if fut is not None and not fut.done():
            fut.set_result(message)

    async def call(self, n: int) -> int:
        assert self.channel is not None and self.reply_queue is not None
        correlation_id = secrets.token_hex(16)
        fut = asyncio.get_running_loop().create_future()
        self.futures[correlation_id] = fut
        message = aio_pika.Message(
            raw_request(n, correlation_id, self.reply_queue.name),
            content_type="application/json",
            correlation_id=correlation_id,
            reply_to=self.reply_queue.name,
        )
        await self.channel.default_exchange.publish(message, routing_key=self.queue)
        reply = await fut
        return int(orjson.loads(reply.body)["body"]["n"])

    def server_version(self) -> str:
        """The broker's version, from the properties it sent when the connection opened."""
        transport = getattr(self.connection, "transport", None)
        props = getattr(getattr(transport, "connection", None), "server_properties", None) or {}
        version = props.get("version", "unknown")
        return version.decode() if isinstance(version, bytes) else str(version)


def ringstack_caller(bus: AsyncBus, queue: str) -> Caller:
    async def call(n: int) -> int:
        reply = await bus.call(queue, CALL_NAME, {"n": n}, timeout=CALL_TIMEOUT)
        return int(reply["n"])

    return call


# ---------------------------------------------------------------------------------------- measuring


@dataclass(slots=True)
class Run:
    impl: str
    inflight: int
    calls: int
    seconds: float
    latencies: list[float]

    @property
    def calls_per_s(self) -> float:
        return self.calls / self.seconds


@dataclass(frozen=True, slots=True)
class Result:
    impl: str
    inflight: int
    calls: int
    rounds: int
    calls_per_s: float
    calls_per_s_rounds: list[float]
    p50_ms: float
    p99_ms: float
    mean_ms: float


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    index = max(0, min(len(sorted_values) - 1, round(fraction * len(sorted_values)) - 1))
    return sorted_values[index]


async def measure(impl: str, call: Caller, calls: int, inflight: int) -> Run:
    """Make ``calls`` calls keeping ``inflight`` in flight; time the whole run and every call."""
    latencies: list[float] = []
    numbers = iter(range(calls))  # shared by the workers, so exactly ``calls`` calls are made

    async def worker() -> None:
        for n in numbers:
            start = time.perf_counter()
            got = await call(n)
            latencies.append(time.perf_counter() - start)
            if got != n:
                raise RuntimeError(f"{impl}: asked for {n}, the echo said {got}")

    start = time.perf_counter()
    async with asyncio.timeout(RUN_TIMEOUT):
        await asyncio.gather(*(worker() for _ in range(inflight)))
    return Run(impl, inflight, calls, time.perf_counter() - start, latencies)


def summarize(runs: list[Run]) -> Result:
    latencies = sorted(lat for run in runs for lat in run.latencies)
    rates = [run.calls_per_s for run in runs]
    return Result(
        impl=runs[0].impl,
        inflight=runs[0].inflight,
        calls=runs[0].calls,
        rounds=len(runs),
        calls_per_s=statistics.median(rates),
        calls_per_s_rounds=[round(rate, 1) for rate in rates],
        p50_ms=percentile(latencies, 0.50) * 1000,
        p99_ms=percentile(latencies, 0.99) * 1000,
        mean_ms=statistics.fmean(latencies) * 1000,
    )


def schedule(rounds: int) -> Iterator[tuple[int, str]]:
    """(in-flight, impl) in run order; the implementation order alternates to cancel drift."""
    for round_no in range(rounds):
        for level_no, inflight in enumerate(INFLIGHT_LEVELS):
            order = IMPLS if (round_no + level_no) % 2 == 0 else IMPLS[::-1]
            for impl in order:
                yield inflight, impl


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


async def run_all(callers: dict[str, Caller], calls: dict[int, int], rounds: int) -> list[Result]:
    for impl, call in callers.items():
        await measure(impl, call, WARMUP_CALLS, WARMUP_INFLIGHT)
    runs: dict[tuple[str, int], list[Run]] = {}
    for inflight, impl in schedule(rounds):
        run = await measure(impl, callers[impl], calls[inflight], inflight)
        progress(f"  {impl:<9} in flight {inflight:>3}: {run.calls_per_s:8.0f} calls/s")
        runs.setdefault((impl, inflight), []).append(run)
    return [summarize(runs[impl, inflight]) for inflight in INFLIGHT_LEVELS for impl in IMPLS]


# ---------------------------------------------------------------------------------------- orchestration


async def cleanup(url: str, names: Names) -> None:
    """Delete every queue and exchange the run declared (the exclusive ones are normally gone)."""
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await (await connection.channel()).get_underlay_channel()
        for queue in names.queues():
            await channel.queue_delete(queue)
        for exchange in names.exchanges():
            await channel.exchange_delete(exchange)


def message_sizes(names: Names) -> dict[str, dict[str, int]]:
    """Bytes of a typical request and reply body on the wire, per implementation."""
    env = Envelope(name=CALL_NAME, kind="call", body={"n": 1000}, deadline=time.time() + CALL_TIMEOUT)
    env.reply_to = names.topology.reply_queue(env.id).name
    raw_reply_to = "amq.gen-" + "x" * 22  # the broker's name for the raw client's reply queue
    return {
        "ringstack": {"request": len(env.encode()), "reply": len(env.reply({"n": 1000}).encode())},
        "raw": {
            "request": len(raw_request(1000, env.id, raw_reply_to)),
            "reply": len(raw_reply(1000, env.id)),
        },
    }


async def run_clients(url: str, names: Names, calls: dict[int, int], rounds: int) -> tuple[list[Result], str]:
    """Connect both clients, measure, and return the results and the broker's version."""
    bus = AsyncBus(url, names.topology, process_name=f"{names.namespace}-client")
    raw = RawClient(url, names.raw_queue)
    try:
        await bus.start()
        await raw.start()
        callers = {"ringstack": ringstack_caller(bus, names.ringstack_queue), "raw": raw.call}
        return await run_all(callers, calls, rounds), raw.server_version()
    finally:
        await bus.close()
        await raw.close()


async def benchmark(url: str, calls: dict[int, int], rounds: int) -> dict[str, Any]:
    names = Names(f"bench-{secrets.token_hex(4)}")
    progress(f"namespace {names.namespace}")
    try:
        async with server_process("ringstack", url, names), server_process("raw", url, names):
            results, broker_version = await run_clients(url, names, calls, rounds)
    finally:
        await cleanup(url, names)
    return report(results, calls, rounds, broker_version, message_sizes(names))


# ---------------------------------------------------------------------------------------- reporting


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine(broker_version: str) -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "aio_pika": package_version("aio-pika"),
        "aiormq": package_version("aiormq"),
        "rabbitmq": broker_version,
    }


def ratios(results: list[Result]) -> dict[str, float]:
    rate = {(r.impl, r.inflight): r.calls_per_s for r in results}
    return {str(n): round(rate["ringstack", n] / rate["raw", n], 3) for n in INFLIGHT_LEVELS}


def report(
    results: list[Result],
    calls: dict[int, int],
    rounds: int,
    broker_version: str,
    sizes: dict[str, dict[str, int]],
) -> dict[str, Any]:
    ratio = ratios(results)
    return {
        "machine": machine(broker_version),
        "config": {
            "calls": {str(k): v for k, v in calls.items()},
            "rounds": rounds,
            "warmup_calls": WARMUP_CALLS,
            "prefetch": PREFETCH,
            "body_bytes": sizes,
        },
        "results": [
            {
                **asdict(r),
                "calls_per_s": round(r.calls_per_s, 1),
                "p50_ms": round(r.p50_ms, 3),
                "p99_ms": round(r.p99_ms, 3),
                "mean_ms": round(r.mean_ms, 3),
            }
            for r in results
        ],
        "ratio": ratio,
        "goal": {
            "inflight": GOAL_INFLIGHT,
            "min_ratio": GOAL_RATIO,
            "met": ratio[str(GOAL_INFLIGHT)] >= GOAL_RATIO,
        },
    }


def table(data: dict[str, Any]) -> str:
    lines = [
        f"{'impl':<10} {'in-flight':>9} {'calls/s':>9} {'p50 ms':>8} {'p99 ms':>8}",
        "-" * 48,
    ]
    for r in data["results"]:
        rate, p50, p99 = r["calls_per_s"], r["p50_ms"], r["p99_ms"]
        lines.append(f"{r['impl']:<10} {r['inflight']:>9} {rate:>9.0f} {p50:>8.2f} {p99:>8.2f}")
    lines.append("")
    for inflight, value in data["ratio"].items():
        lines.append(f"ratio ringstack/raw at {inflight:>2} in flight: {value:.2f}")
    goal = data["goal"]
    verdict = "met" if goal["met"] else "NOT met"
    lines.append(f"goal ratio >= {goal['min_ratio']} at {goal['inflight']} in flight: {verdict}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.bus_rpc", description=__doc__.split("\n")[0])
    parser.add_argument("--broker-url", default=DEFAULT_URL, help="AMQP URL (default: %(default)s)")
    parser.add_argument(
        "--calls",
        type=int,
        default=None,
        help="calls per measured run at every in-flight level (default: 1500 at 1, 3000 at 64)",
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="measure every level this many times (default: %(default)s)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--serve", choices=IMPLS, help=argparse.SUPPRESS)
    parser.add_argument("--namespace", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.calls is not None and args.calls < 1:
        parser.error("--calls must be at least 1")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.serve and not args.namespace:
        parser.error("--serve needs --namespace")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.serve:
        asyncio.run(serve(args.serve, args.broker_url, Names(args.namespace)))
        return 0
    calls = {n: args.calls or DEFAULT_CALLS[n] for n in INFLIGHT_LEVELS}
    data = asyncio.run(benchmark(args.broker_url, calls, args.rounds))
    print(json.dumps(data) if args.json else table(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
