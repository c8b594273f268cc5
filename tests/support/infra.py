"""Real PostgreSQL and RabbitMQ for tests, each test isolated.

Isolation: every test gets its own database, cloned from a migrated template (``CREATE DATABASE
... TEMPLATE``, ~50 ms, versus running every migration again), and its own topology namespace
(``t<hex>.*`` queues and exchanges), deleted afterwards. Nothing touches data that was there before.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import kombu
import psycopg2
from psycopg2 import sql

from bus.topology import Topology

BROKER_URL = os.environ.get("RINGSTACK_TEST_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/")
PG_ADMIN_DSN = os.environ.get(
    "RINGSTACK_TEST_PG_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
)
PG_URL_BASE = os.environ.get("RINGSTACK_TEST_PG_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432")


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:12]}"


@contextmanager
def _admin() -> Iterator[psycopg2.extensions.connection]:
    conn = psycopg2.connect(PG_ADMIN_DSN)
    conn.autocommit = True
    try:
        yield conn
    finally:
        conn.close()


def database_url(name: str) -> str:
    return f"{PG_URL_BASE}/{name}"


def create_database(name: str, template: str | None = None) -> str:
    with _admin() as conn, conn.cursor() as cur:
        if template:
            cur.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                    sql.Identifier(name), sql.Identifier(template)
                )
            )
        else:
            cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return database_url(name)


def drop_database(name: str) -> None:
    with _admin() as conn, conn.cursor() as cur:
        cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def delete_topology(namespace: str) -> None:
    """Delete the shared queues and exchanges a test namespace may have left behind."""
    topo = Topology(namespace)
    with kombu.Connection(BROKER_URL) as conn:
        channel = conn.channel()
        for queue in topo.shared_queues():
            channel.queue_delete(queue.name)
        for exchange in topo.exchanges():
            channel.exchange_delete(exchange.name)
        channel.close()


def rabbitmqctl(*args: str, timeout: float = 60) -> str:
    return subprocess.run(
        ["rabbitmqctl", *args], check=True, capture_output=True, text=True, timeout=timeout
    ).stdout


def close_connections(connection_name_part: str) -> int:
    """Make the broker close every connection whose client-given name contains the given text."""
    out = rabbitmqctl("list_connections", "pid", "client_properties", "--no-table-headers", "--quiet")
    closed = 0
    for line in out.splitlines():
        if connection_name_part in line:
            pid = line.split("\t", 1)[0].strip()
            rabbitmqctl("close_connection", pid, "closed by a ringstack test")
            closed += 1
    return closed


def queue_depth(name: str) -> int:
    with kombu.Connection(BROKER_URL) as conn:
        channel = conn.channel()
        try:
            _, count, _ = channel.queue_declare(name, passive=True)
        finally:
            channel.close()
        return int(count)


def schema_diffs(url: str, tables: set[str]) -> list[Any]:
    """What Alembic's autogenerate sees between the database at ``url`` and the models, limited to
    ``tables``: empty when a migration created exactly what the models declare."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlalchemy import create_engine

    from schema.db import Base

    def include(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
        table = name if type_ == "table" else getattr(getattr(obj, "table", None), "name", None)
        return table in tables

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True, "include_object": include})
            return list(compare_metadata(context, Base.metadata))
    finally:
        engine.dispose()
