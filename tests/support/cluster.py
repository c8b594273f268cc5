"""Several real management-node processes sharing one database and one namespace."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import psycopg2
from sqlalchemy.engine import make_url

from bus.aio import AsyncBus
from bus.envelope import new_uuid
from bus.errors import RingstackError
from tests.support.procs import NodeProcess, node_env

T = TypeVar("T")

FAST_CLUSTER = {
    "heartbeat_interval": "0.5",
    "heartbeat_misses": "3",
    "lease_ttl": "1.5",
    "drain_timeout": "20",
    "extra_services": "tests.support.services:TestingService,tests.support.services:AuditService",
}


class ClusterOfProcesses:
    def __init__(self, database_url: str, namespace: str, broker_url: str, **settings: str) -> None:
        self.database_url = database_url
        self.env_base = node_env(database_url, namespace, broker_url, **{**FAST_CLUSTER, **settings})
        self.nodes: dict[str, NodeProcess] = {}

    def start(self, count: int = 1) -> list[str]:
        started = []
        for _ in range(count):
            uuid = new_uuid()
            proc = NodeProcess({**self.env_base, "RINGSTACK_NODE_UUID": uuid}, name=f"node-{uuid[:8]}")
            self.nodes[uuid] = proc
            started.append(uuid)
        for uuid in started:
            self.nodes[uuid].wait_ready()
        return started

    def alive(self) -> list[str]:
        return [u for u, p in self.nodes.items() if p.proc.poll() is None]

    def close(self) -> None:
        for proc in self.nodes.values():
            proc.close()

    def sql(self, query: str, *args: Any) -> list[tuple[Any, ...]]:
        url = make_url(self.database_url)
        conn = psycopg2.connect(
            host=url.host, port=url.port, user=url.username, password=url.password, dbname=url.database
        )
        try:
            with conn, conn.cursor() as cur:
                cur.execute(query, args)
                return list(cur.fetchall()) if cur.description else []
        finally:
            conn.close()


async def node_status(client: AsyncBus, node_uuid: str) -> dict[str, Any]:
    return await client.call(
        client.topology.node_queue(node_uuid).name, "ringstack.NodeStatus", {}, timeout=5
    )


async def until(
    check: Callable[[], Awaitable[T | None]] | Callable[[], T | None], timeout: float, what: str
) -> T:
    """THE polling helper of the tests (use an event instead whenever there is one to await): call
    ``check`` (a coroutine function or a plain one) until it returns something truthy, and return
    that; a ``RingstackError`` counts as not yet. Fails naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if inspect.isawaitable(result):
                result = await result
        except RingstackError as exc:
            result, last = None, exc
        if result:
            return result
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what} (last error: {last})")
