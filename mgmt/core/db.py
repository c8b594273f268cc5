"""The database, reached from asyncio through a bounded thread pool.

psycopg2 blocks, so every transaction runs in a worker thread; the pool has as many threads as the
engine has connections, so a burst of requests queues here instead of on the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import create_engine, text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.orm.exc import StaleDataError

from bus.errors import RingstackError, Sys

if TYPE_CHECKING:
    from mgmt.core.service import CallContext

T = TypeVar("T")


M = TypeVar("M")


def create_guard(session: Session, model: type[M], uuid: str, ctx: CallContext) -> M | None:
    """Before creating ``model`` under ``uuid``: the existing row when a resumed request already
    created it (so the create completes instead of failing), ``SYS.CONFLICT`` when the uuid is
    taken otherwise, None when the create should go ahead."""
    existing = session.get(model, uuid)
    if existing is None:
        return None
    if ctx.resumed:
        return existing
    raise RingstackError(Sys.CONFLICT, f"resource uuid {uuid} is already in use", details={"uuid": uuid})


@dataclass(frozen=True, slots=True)
class Fence:
    """The ownership a transaction depends on: this node must still hold ``partition`` under
    fencing ``token``. Checked inside the transaction with a share lock on the partition row, so a
    takeover (which updates that row) waits for this transaction, and a stale owner's write fails."""

    node_uuid: str
    partition: int
    token: int


# deadlock_detected, serialization_failure: the transaction lost a race and may simply be retried.
_RETRYABLE = frozenset({"40P01", "40001"})

# Set by the job runner around a job's execution; every transaction in it is fenced.
CURRENT_FENCE: ContextVar[Fence | None] = ContextVar("ringstack_fence", default=None)

_FENCE_SQL = text(
    "SELECT 1 FROM ring_partition WHERE partition = :p AND owner_node_uuid = :n AND token = :t FOR SHARE"
)


def check_fence(session: Session, fence: Fence) -> None:
    row = session.execute(_FENCE_SQL, {"p": fence.partition, "n": fence.node_uuid, "t": fence.token}).first()
    if row is None:
        raise RingstackError(
            Sys.NOT_OWNER,
            f"this node no longer owns partition {fence.partition}; another node has taken over",
            details={"partition": fence.partition},
        )


class Database:
    def __init__(self, url: str, *, pool_size: int = 8) -> None:
        self.engine = create_engine(
            url, pool_size=pool_size, max_overflow=0, pool_pre_ping=True, pool_recycle=1800
        )
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._pool = ThreadPoolExecutor(max_workers=pool_size, thread_name_prefix="db")
        # The cluster's heartbeats and lease renewals get connections and threads of their own: a
        # burst of slow request transactions must never starve them, or the node's lease would
        # lapse and it would fence itself while perfectly healthy (ZStack, likewise, heartbeats on a
        # dedicated connection).
        self._system_engine = create_engine(url, pool_size=2, max_overflow=0, pool_pre_ping=True, pool_recycle=1800)
        self._system_sessions = sessionmaker(self._system_engine, expire_on_commit=False)
        self._system_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="db-cluster")

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(session, *args)`` in one transaction on a worker thread; commit unless it raises."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._transaction, fn, args, CURRENT_FENCE.get())

    async def run_unfenced(self, fn: Callable[..., T], *args: Any) -> T:
        """``run`` without the job's fence: for the job runner's own claims and records."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._transaction, fn, args, None)

    async def run_system(self, fn: Callable[..., T], *args: Any) -> T:
        """Membership and lease work, on the cluster's own connections and threads."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._system_pool, self._transaction, fn, args, None, self._system_sessions)

    def run_system_blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """``run_system`` for a thread of its own (the lease keeper), off the event loop."""
        return self._transaction(fn, args, None, self._system_sessions)

    def _transaction(
        self,
        fn: Callable[..., T],
        args: tuple[Any, ...],
        fence: Fence | None,
        sessions: sessionmaker[Session] | None = None,
    ) -> T:
        try:
            with (sessions or self._sessions).begin() as session:
                if fence is not None:
                    check_fence(session, fence)
                return fn(session, *args)
        except StaleDataError as exc:
            raise RingstackError(Sys.CONFLICT, "the resource was changed concurrently; retry") from exc
        except IntegrityError as exc:
            raise RingstackError(
                Sys.CONFLICT, f"the change conflicts with existing data: {exc.orig}"
            ) from exc
        except OperationalError as exc:
            if getattr(exc.orig, "pgcode", None) in _RETRYABLE:
                raise RingstackError(Sys.CONFLICT, f"concurrent transactions collided; retry: {exc.orig}") from exc
            raise RingstackError(Sys.UNAVAILABLE, f"database unavailable: {exc.orig}") from exc

    def session(self) -> Session:
        """A plain session for synchronous tools (CLI, tests); not for use on the event loop."""
        return self._sessions()

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._system_pool.shutdown(wait=True)
        self.engine.dispose()
        self._system_engine.dispose()
