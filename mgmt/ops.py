"""What an operator sees of one management node: ``/healthz``, ``/readyz``, Prometheus ``/metrics``,
and the node-queue messages ``ringstack-ctl`` sends it (``ops.Status``, ``ops.Drain``, ``ops.Stop``,
``ops.Logs``: the end of its ``log_file``, so ``collect-logs`` gathers every node's over the bus;
``ops.Restart``: as ``ops.Stop``, but the process exits ``EXIT_RESTART`` so that its supervisor,
``ringstack-ctl start --supervise`` or systemd, starts it again; refused when nothing supervises it).

The HTTP endpoint listens on ``ops_address`` (``host:port``; port 0 picks a free one, logged as
``ops endpoint at http://...``; empty: no endpoint). Health: 200 while the process runs and its
broker connection is up. Readiness: 200 while it takes API requests; 503 once it drains or stops
(oslo.middleware's healthcheck, CloudStack's maintenance mode).

Drain (``ops.Drain``): readiness goes false at once and the node stops taking API requests (its API
consumer is cancelled, so the broker gives them to the other nodes), but it keeps its ring
partitions and runs the jobs it owns, also those routed to it later, until it stops, when they are
handed over (``ManagementNode.stop``). ``ops.Stop`` stops the process as SIGTERM does: drain, hand
over, exit 0.

Metrics (one registry per node): ``ringstack_api_seconds{message}`` (the API gateway's time per
request: validation, authentication, and the reply, or the job's acceptance for a mutating
request), ``ringstack_jobs{state}`` (the database's job rows by state), ``ringstack_node_jobs
{state="running|scheduled"}`` (this node's), ``ringstack_serial_queue_depth``,
``ringstack_ring_epoch``, ``ringstack_ring_members``, ``ringstack_partitions_held``,
``ringstack_db_pool_connections{state="checked_out|idle"}``, ``ringstack_broker_reconnects_total``,
``ringstack_ready``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import text

from bus.envelope import Envelope
from bus.errors import RingstackError, Sys
from mgmt.cli.supervise import supervisor_name
from mgmt.cli.upgrade import known_head

if TYPE_CHECKING:
    from mgmt.node import ManagementNode

log = logging.getLogger(__name__)

OPS_STATUS = "ops.Status"
OPS_DRAIN = "ops.Drain"
OPS_STOP = "ops.Stop"
OPS_LOGS = "ops.Logs"
OPS_RESTART = "ops.Restart"
MESSAGES = (OPS_STATUS, OPS_DRAIN, OPS_STOP, OPS_LOGS, OPS_RESTART)
LOG_TAIL_MAX = 512 * 1024  # a reply must fit in one message (max_message_bytes, 1 MiB by default)
JOB_STATES = ("pending", "running", "succeeded", "failed", "cancelled")


class _NodeCollector(Collector):
    """Gauges read from the node when scraped (nothing to keep up to date in between)."""

    def __init__(self, ops: NodeOps) -> None:
        self.ops = ops

    def collect(self) -> Iterator[GaugeMetricFamily]:
        node = self.ops.node
        status: dict[str, Any] = node.cluster.status() if self.ops.started else {}

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, value=value)

        yield gauge("ringstack_ready", "1 while the node takes API requests", float(self.ops.ready))
        yield gauge("ringstack_ring_epoch", "the ring epoch this node sees", float(status.get("epoch", 0)))
        yield gauge("ringstack_ring_members", "live nodes on the ring", float(len(status.get("members", ()))))
        yield gauge(
            "ringstack_partitions_held", "partitions this node owns", float(status.get("partitionsHeld", 0))
        )
        yield gauge(
            "ringstack_serial_queue_depth",
            "requests waiting in per-resource serial queues",
            float(status.get("serialQueueDepth", 0)),
        )
        own = GaugeMetricFamily("ringstack_node_jobs", "jobs on this node", labels=["state"])
        own.add_metric(["running"], float(status.get("runningJobs", 0)))
        own.add_metric(["scheduled"], float(status.get("scheduledJobs", 0)))
        yield own
        jobs = GaugeMetricFamily("ringstack_jobs", "job rows in the database by state", labels=["state"])
        for state, count in self.ops.job_counts().items():
            jobs.add_metric([state], float(count))
        yield jobs
        pool = GaugeMetricFamily(
            "ringstack_db_pool_connections", "database pool connections", labels=["state"]
        )
        engine_pool: Any = node.db.engine.pool
        with contextlib.suppress(AttributeError):
            pool.add_metric(["checked_out"], float(engine_pool.checkedout()))
            pool.add_metric(["idle"], float(engine_pool.checkedin()))
        yield pool
        reconnects = GaugeMetricFamily(
            "ringstack_broker_reconnects_total",
            "broker connections after the first",
            value=float(max(0, node.bus.connection_count - 1)),
        )
        yield reconnects


class NodeOps:
    def __init__(self, node: ManagementNode) -> None:
        self.node = node
        self.registry = CollectorRegistry()
        self.api_seconds = Histogram(
            "ringstack_api_seconds",
            "API gateway time per request, by message",
            ["message"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.started = False
        self.draining = False
        self.restart_requested = False  # ringstack-ctl start then exits EXIT_RESTART
        self.address: str | None = None
        self._server: asyncio.Server | None = None
        self._job_counts: tuple[float, dict[str, int]] = (0.0, {})
        self.registry.register(_NodeCollector(self))  # not described up front: collect() reads live state

    @property
    def ready(self) -> bool:
        return self.started and not self.draining and not self.node._stopping

    # ------------------------------------------------------------------ hooks the node calls

    def timed_api(
        self, handler: Callable[[Envelope], Awaitable[Any]]
    ) -> Callable[[Envelope], Awaitable[Any]]:
        """Wrap the API gateway so each request's time lands in ``ringstack_api_seconds``."""

        async def timed(env: Envelope) -> Any:
            started = time.perf_counter()
            try:
                return await handler(env)
            finally:
                # Only registered API names: a flood of made-up names must not grow the label set.
                name = env.name if self.node.dispatcher.handles(env.name) else "(unknown)"
                self.api_seconds.labels(name).observe(time.perf_counter() - started)

        return timed

    async def start(self) -> None:
        """Start the HTTP endpoint (when configured); the node is ready once this returns."""
        address = self.node.config.ops_address
        if address:
            host, _, port = address.rpartition(":")
            self._server = await asyncio.start_server(self._serve, host or "127.0.0.1", int(port))
            sock = self._server.sockets[0].getsockname()
            self.address = f"{sock[0]}:{sock[1]}"
            log.info(
                "node %s: ops endpoint at http://%s (/healthz /readyz /metrics)", self.node.uuid, self.address
            )
        self.started = True

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    def handles(self, name: str) -> bool:
        return name in MESSAGES

    async def on_call(self, env: Envelope) -> dict[str, Any]:
        if env.name == OPS_LOGS:
            return await asyncio.to_thread(self.log_tail, env.body.get("bytes"))
        if env.name == OPS_DRAIN:
            await self.drain()
        elif env.name in (OPS_STOP, OPS_RESTART):
            if env.name == OPS_RESTART:
                supervisor = supervisor_name()
                if supervisor is None:
                    raise RingstackError(
                        Sys.CONFLICT,
                        "this node runs unsupervised: nothing would start it again"
                        " (ringstack-ctl start --supervise, or systemd)",
                    )
                self.restart_requested = True
            await self.drain()
            # The same path as SIGTERM (ringstack-ctl start's handler): drain, hand over, exit.
            asyncio.get_running_loop().call_later(0.05, os.kill, os.getpid(), signal.SIGTERM)
        return self.status()

    def status(self) -> dict[str, Any]:
        return {
            "uuid": self.node.uuid,
            "ready": self.ready,
            "draining": self.draining or self.node._stopping,
            "opsAddress": self.address,
            "pid": os.getpid(),
            "supervisor": supervisor_name(),
            "schemaHead": known_head(),  # the contract step waits until every node knows the newest
        }

    def log_tail(self, wanted: Any) -> dict[str, Any]:
        """The end of this node's log file (``log_file``), whole lines, at most LOG_TAIL_MAX bytes."""
        path = self.node.config.log_file
        size = min(int(wanted), LOG_TAIL_MAX) if isinstance(wanted, int) and wanted > 0 else LOG_TAIL_MAX
        if not path:
            return {"uuid": self.node.uuid, "logFile": None, "text": ""}
        try:
            with open(path, "rb") as f:
                f.seek(0, os.SEEK_END)
                end = f.tell()
                f.seek(max(0, end - size))
                data = f.read(size)
        except OSError as exc:
            return {"uuid": self.node.uuid, "logFile": path, "text": "", "error": str(exc)}
        if end > size and b"\n" in data:
            data = data.split(b"\n", 1)[1]  # from the first whole line
        return {"uuid": self.node.uuid, "logFile": path, "text": data.decode("utf-8", "replace")}

    async def drain(self) -> None:
        """Readiness false now; take no more API requests; keep owned work until the node stops."""
        if self.draining:
            return
        self.draining = True
        log.info(
            "node %s: draining: no more API requests; owned jobs go on until handed over", self.node.uuid
        )
        consumer = self.node._api_consumer
        if consumer is not None:
            await self.node.bus.cancel(consumer)

    # ------------------------------------------------------------------ metrics

    def job_counts(self) -> dict[str, int]:
        """Job rows by state, read at most once a second (a scrape must not load the database)."""
        at, counts = self._job_counts
        if time.monotonic() - at < 1.0:
            return counts
        counts = dict.fromkeys(JOB_STATES, 0)
        try:
            with self.node.db.engine.connect() as conn:
                for state, count in conn.execute(text("SELECT state, count(*) FROM job GROUP BY state")):
                    counts[str(state)] = int(count)
        except Exception as exc:  # the metric goes stale, the scrape still answers
            log.warning("job counts unavailable: %s", exc)
            return self._job_counts[1]
        self._job_counts = (time.monotonic(), counts)
        return counts

    # ------------------------------------------------------------------ HTTP

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), 5)
            while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                pass  # headers: nothing here needs them
            parts = request.decode("latin-1").split()
            path = parts[1].split("?", 1)[0] if len(parts) >= 2 else ""
            status, body, kind = await self._answer(path)
            head = (
                f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n"
            )
            writer.write(head.encode() + body)
            await writer.drain()
        except (TimeoutError, ConnectionError, UnicodeDecodeError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _answer(self, path: str) -> tuple[str, bytes, str]:
        plain = "text/plain; charset=utf-8"
        if path == "/healthz":
            alive = self.node.bus.connected and not self.node._stopped.is_set()
            return (
                ("200 OK", b"ok\n", plain) if alive else ("503 Service Unavailable", b"broker down\n", plain)
            )
        if path == "/readyz":
            if self.ready:
                return "200 OK", b"ready\n", plain
            return "503 Service Unavailable", b"draining\n" if self.draining else b"not ready\n", plain
        if path == "/metrics":
            body = await asyncio.to_thread(generate_latest, self.registry)
            return "200 OK", body, "text/plain; version=0.0.4; charset=utf-8"
        return "404 Not Found", b"/healthz /readyz /metrics\n", plain
