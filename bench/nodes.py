"""What the cluster benchmarks share: a throw-away database and namespace, real node processes, a client.

Not a benchmark itself. ``bench.failover`` and ``bench.routing`` use it to

* create their own PostgreSQL database (``CREATE DATABASE``, then every migration through
  ``mgmt.core.migrate.upgrade``, then the audit table of the test service) and drop it at the end;
* run in their own topology namespace ``bench-<name>-<hex>`` and delete its shared queues and
  exchanges at the end (node, reply and membership queues are exclusive: the broker deletes them
  with their connection). Optionally everything runs in a temporary RabbitMQ virtual host instead
  (``rabbitmqctl add_vhost`` / ``delete_vhost``): that is how ``bench.failover`` runs nodes that
  cannot see the broker's event exchange, which the plugin only declares in the ``/`` vhost;
* start real ``ringstack-ctl start`` processes (like ``tests/support/procs.py``), each stdout/stderr
  line kept with the monotonic time it was read, and SIGKILL them;
* talk to the nodes with an ``AsyncBus``, logged in as the bootstrap admin when the identity
  service is there (``LogInByAccount``), with no session when it is not.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote, urlsplit, urlunsplit

import kombu
import psycopg2
from psycopg2 import sql
from psycopg2.extensions import make_dsn

if __package__ in (None, ""):  # run as ``python bench/x.py``: make the repository importable, as -m does
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bus.aio import AsyncBus
from bus.envelope import new_uuid
from bus.errors import RingstackError, Sys
from bus.ring import Ring
from bus.topology import Topology

REPO_ROOT: Final = Path(__file__).resolve().parent.parent
DEFAULT_BROKER_URL: Final = os.environ.get("RINGSTACK_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/")
PG_ADMIN_DSN: Final = os.environ.get(
    "RINGSTACK_BENCH_PG_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
)
PG_URL_BASE: Final = os.environ.get("RINGSTACK_BENCH_PG_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432")
AUDIT_SERVICE: Final = "tests.support.services:AuditService"
ADMIN: Final = ("admin", "password")  # the bootstrap admin and the default admin_initial_password
NODE_STATUS: Final = "ringstack.NodeStatus"
READY_MARK: Final = " ready: "


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an already sorted, non-empty list."""
    index = max(0, min(len(sorted_values) - 1, round(fraction * len(sorted_values)) - 1))
    return sorted_values[index]


# ---------------------------------------------------------------------------------------- database


class Scratch:
    """One throw-away database, migrated to head, with the audit table of the test service."""

    def __init__(self, label: str) -> None:
        self.name = f"bench_{label}_{secrets.token_hex(4)}"
        self.url = f"{PG_URL_BASE}/{self.name}"

    def _admin(self, statement: sql.Composable) -> None:
        conn = psycopg2.connect(PG_ADMIN_DSN)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(statement)
        finally:
            conn.close()

    def create(self) -> None:
        from mgmt.core.migrate import upgrade
        from tests.support.services import AUDIT_DDL

        self._admin(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.name)))
        upgrade(self.url)
        self.sql(AUDIT_DDL)

    def drop(self) -> None:
        self._admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(self.name)))

    def connect(self) -> psycopg2.extensions.connection:
        conn = psycopg2.connect(make_dsn(PG_ADMIN_DSN, dbname=self.name))
        conn.autocommit = True
        return conn

    def sql(self, query: str, *args: Any) -> list[tuple[Any, ...]]:
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(query, args)
                return list(cur.fetchall()) if cur.description else []
        finally:
            conn.close()


# ---------------------------------------------------------------------------------------- broker


def rabbitmqctl(*args: str) -> str:
    return subprocess.run(
        ["rabbitmqctl", *args], check=True, capture_output=True, text=True, timeout=60
    ).stdout


@dataclass
class BrokerScope:
    """A namespace on the broker, optionally inside a temporary virtual host of its own."""

    base_url: str
    label: str
    own_vhost: bool = False
    namespace: str = ""
    vhost: str | None = None
    url: str = ""

    def __post_init__(self) -> None:
        suffix = secrets.token_hex(4)
        self.namespace = f"bench-{self.label}-{suffix}"
        self.url = self.base_url
        if self.own_vhost:
            self.vhost = f"bench-{self.label}-{suffix}"
            parts = urlsplit(self.base_url)
            self.url = urlunsplit(parts._replace(path="/" + quote(self.vhost, safe="")))

    @property
    def topology(self) -> Topology:
        return Topology(self.namespace)

    def create(self) -> None:
        if self.vhost is not None:
            user = urlsplit(self.base_url).username or "guest"
            rabbitmqctl("add_vhost", self.vhost)
            rabbitmqctl("set_permissions", "-p", self.vhost, user, ".*", ".*", ".*")

    def delete(self) -> None:
        if self.vhost is not None:
            rabbitmqctl("delete_vhost", self.vhost)  # takes every queue and exchange with it
            return
        with kombu.Connection(self.url) as conn:
            channel = conn.channel()
            for queue in self.topology.shared_queues():
                channel.queue_delete(queue.name)
            for exchange in self.topology.exchanges():
                channel.exchange_delete(exchange.name)
            channel.close()


# ---------------------------------------------------------------------------------------- nodes


@dataclass(frozen=True, slots=True)
class LogLine:
    at: float  # time.monotonic() when this process read the line
    text: str


@dataclass
class Node:
    """One ``ringstack-ctl start`` process."""

    uuid: str
    proc: subprocess.Popen[str]
    lines: list[LogLine] = field(default_factory=list)
    ready: threading.Event = field(default_factory=threading.Event)
    killed_at: float | None = None

    @property
    def short(self) -> str:
        return self.uuid[:8]

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None and self.killed_at is None

    def read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            text = raw.rstrip("\n")
            self.lines.append(LogLine(time.monotonic(), text))
            if READY_MARK in text:
                self.ready.set()
        self.ready.set()  # ended: wake the waiter, who checks the exit code

    def lines_since(self, since: float, *needles: str) -> list[LogLine]:
        return [ln for ln in list(self.lines) if ln.at >= since and all(n in ln.text for n in needles)]

    def tail(self, count: int = 40) -> str:
        return "\n".join(ln.text for ln in self.lines[-count:])

    def kill(self) -> float:
        """SIGKILL; the monotonic time just before the signal was sent."""
        at = time.monotonic()
        self.proc.send_signal(signal.SIGKILL)
        self.killed_at = at
        return at


def node_environment(scratch: Scratch, broker: BrokerScope, settings: Mapping[str, str]) -> dict[str, str]:
    """The environment of a node process: ours minus any RINGSTACK_* setting, plus this run's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RINGSTACK_")}
    env.update(
        {
            "PYTHONPATH": str(REPO_ROOT),
            "PYTHONUNBUFFERED": "1",
            "RINGSTACK_CONFIG": "/dev/null",  # an empty TOML file: no stray /etc/ringstack config
            "RINGSTACK_DATABASE_URL": scratch.url,
            "RINGSTACK_BROKER_URL": broker.url,
            "RINGSTACK_NAMESPACE": broker.namespace,
            "RINGSTACK_EXTRA_SERVICES": AUDIT_SERVICE,
        }
    )
    env.update({f"RINGSTACK_{k.upper()}": v for k, v in settings.items()})
    return env


class Nodes:
    """The node processes of one run, in start order."""

    def __init__(
        self, scratch: Scratch, broker: BrokerScope, settings: Mapping[str, str] | None = None
    ) -> None:
        self.env = node_environment(scratch, broker, settings or {})
        self.all: list[Node] = []

    def start(self, count: int = 1, timeout: float = 60.0) -> list[Node]:
        started = []
        for _ in range(count):
            uuid = new_uuid()
            proc = subprocess.Popen(
                [sys.executable, "-m", "mgmt.cli.ctl", "start"],
                cwd=REPO_ROOT,
                env={**self.env, "RINGSTACK_NODE_UUID": uuid},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            node = Node(uuid, proc)
            threading.Thread(target=node.read, daemon=True, name=f"log-{uuid[:8]}").start()
            self.all.append(node)
            started.append(node)
        for node in started:
            if not node.ready.wait(timeout) or node.proc.poll() is not None:
                raise RuntimeError(f"node {node.short} did not become ready:\n{node.tail()}")
        return started

    @property
    def alive(self) -> list[Node]:
        return [n for n in self.all if n.alive]

    def by_uuid(self, uuid: str) -> Node:
        return next(n for n in self.all if n.uuid == uuid)

    def close(self) -> None:
        for node in self.all:
            if node.proc.poll() is None:
                node.proc.send_signal(signal.SIGKILL)
        for node in self.all:
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.proc.wait(10)

    def write_logs(self, directory: Path, label: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        for i, node in enumerate(self.all):
            path = directory / f"{label}-{i}-{node.short}.log"
            path.write_text("\n".join(ln.text for ln in node.lines) + "\n")


@contextlib.contextmanager
def environment(
    label: str, broker_url: str, own_vhost: bool = False
) -> Iterator[tuple[Scratch, BrokerScope]]:
    """A fresh database and broker namespace (or vhost), removed afterwards whatever happens."""
    scratch = Scratch(label.replace("-", "_"))
    broker = BrokerScope(broker_url, label, own_vhost=own_vhost)
    broker.create()
    try:
        scratch.create()
        try:
            yield scratch, broker
        finally:
            scratch.drop()
    finally:
        broker.delete()


# ---------------------------------------------------------------------------------------- client


class Client:
    """An ``AsyncBus`` plus the admin session (None when the node has no identity service)."""

    def __init__(self, broker: BrokerScope, name: str) -> None:
        self.bus = AsyncBus(
            broker.url, broker.topology, process_name=f"{broker.namespace}-{name}", default_timeout=30
        )
        self.session: str | None = None

    async def start(self) -> None:
        await self.bus.start()

    async def close(self) -> None:
        await self.bus.close()

    async def login(self) -> None:
        name, password = ADMIN
        try:
            reply = await self.bus.api(
                "LogInByAccount", {"accountName": name, "password": password}, timeout=10
            )
        except RingstackError as exc:
            if exc.code != Sys.UNKNOWN_MESSAGE:
                raise
            self.session = None  # no identity service: every API is open
            return
        self.session = str(reply["inventory"]["uuid"])

    async def api(self, name: str, body: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
        return await self.bus.api(name, body, session=self.session, timeout=timeout)

    async def status(self, node_uuid: str, timeout: float = 5.0) -> dict[str, Any]:
        return await self.bus.call(
            self.bus.topology.node_queue(node_uuid).name, NODE_STATUS, {}, timeout=timeout
        )


async def converge(client: Client, scratch: Scratch, expected: set[str], timeout: float = 60.0) -> Ring:
    """Wait until every expected node reports the same epoch and members, and the database says
    each partition is held by its ring owner, and each node knows what it holds. The agreed ring."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            statuses = {u: await client.status(u) for u in expected}
        except RingstackError as exc:
            last = exc
            await asyncio.sleep(0.05)
            continue
        epochs = {s["epoch"] for s in statuses.values()}
        partitions = {s["partitions"] for s in statuses.values()}
        if (
            len(epochs) == 1
            and len(partitions) == 1
            and all(set(s["members"]) == expected for s in statuses.values())
        ):
            ring = Ring.build(epochs.pop(), expected, partitions.pop())
            owners = dict(
                await asyncio.to_thread(scratch.sql, "SELECT partition, owner_node_uuid FROM ring_partition")
            )
            if all(owners.get(p) == ring.owner_of_partition(p) for p in range(ring.partitions)) and all(
                s["partitionsHeld"] == len(ring.partitions_of(u)) for u, s in statuses.items()
            ):
                return ring
            last = "partitions not yet where the ring puts them"
        else:
            last = {u[:8]: (s["epoch"], len(s["members"])) for u, s in statuses.items()}
        await asyncio.sleep(0.05)
    raise RuntimeError(
        f"the ring did not converge on {len(expected)} nodes within {timeout} s (last: {last})"
    )


def broker_version(url: str) -> str:
    with kombu.Connection(url) as conn:
        conn.connect()
        props = getattr(conn.connection, "server_properties", None) or {}
        version = props.get("version", "unknown")
        return version.decode() if isinstance(version, bytes) else str(version)


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
            check=True,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip()


def tree_dirty() -> bool:
    """Whether the code under test differs from the commit (other people's uncommitted work)."""
    try:
        out = subprocess.run(
            [
                "git",
                "-C",
                str(REPO_ROOT),
                "status",
                "--porcelain",
                "--",
                "bus",
                "mgmt",
                "schema",
                "tests/support",
            ],
            check=True,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return bool(out.stdout.strip())


def machine(broker_url: str) -> dict[str, Any]:
    from bench.bus_rpc import cpu_model

    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "rabbitmq": broker_version(broker_url),
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],  # at the end of the run
        "commit": git_commit(),
        "uncommitted_changes": tree_dirty(),
    }


# ---------------------------------------------------------------------------------------- CPU use

CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")
RABBITMQ_COMMANDS: Final = frozenset({"beam.smp", "erl_child_setup", "epmd", "inet_gethost"})


def cpu_snapshot() -> dict[int, tuple[str, float]]:
    """Every process's command name and user + system CPU seconds so far."""
    found: dict[int, tuple[str, float]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            raw = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        comm = raw[raw.index("(") + 1 : raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2 :].split()
        found[int(entry.name)] = (comm, (int(fields[11]) + int(fields[12])) / CLOCK_TICKS)  # utime, stime
    return found


def machine_busy_idle() -> tuple[float, float]:
    """Busy and idle CPU seconds of the whole machine so far (all cores)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values[:8]) - idle) / CLOCK_TICKS, idle / CLOCK_TICKS


class CpuMeter:
    """CPU seconds spent between ``start`` and ``stop``, by group: the node processes, the
    simulator (when there is one), this client, PostgreSQL and RabbitMQ (every process of theirs,
    whoever it serves), and the rest of the machine (other work on it, processes that exited
    meanwhile, the kernel)."""

    def __init__(self, node_pids: list[int], simulator_pid: int | None = None) -> None:
        self.node_pids = set(node_pids)
        self.simulator_pid = simulator_pid
        self.groups: tuple[str, ...] = (
            ("nodes", "simulator", "client", "postgres", "rabbitmq", "other")
            if simulator_pid is not None
            else ("nodes", "client", "postgres", "rabbitmq", "other")
        )
        self.before: dict[int, tuple[str, float]] = {}
        self.machine_before = (0.0, 0.0)

    def group(self, pid: int, comm: str) -> str:
        if pid in self.node_pids:
            return "nodes"
        if pid == self.simulator_pid:
            return "simulator"
        if pid == os.getpid():
            return "client"
        if comm == "postgres":
            return "postgres"
        if comm in RABBITMQ_COMMANDS:
            return "rabbitmq"
        return "other"

    def start(self) -> None:
        self.machine_before = machine_busy_idle()
        self.before = cpu_snapshot()

    def stop(self) -> tuple[dict[str, float], float]:
        """CPU seconds by group, and the fraction of the machine's CPU time that was busy."""
        after = cpu_snapshot()
        busy, idle = machine_busy_idle()
        busy -= self.machine_before[0]
        idle -= self.machine_before[1]
        used = dict.fromkeys(self.groups, 0.0)
        for pid, (comm, seconds) in after.items():
            group = self.group(pid, comm)
            if group != "other":
                used[group] += seconds - self.before.get(pid, (comm, 0.0))[1]
        used["other"] = max(0.0, busy - sum(used.values()))
        return used, busy / max(1e-9, busy + idle)
