"""The database, reached from asyncio through a bounded thread pool.

psycopg2 blocks, so every transaction runs in a worker thread; the pool has as many threads as the
engine has connections, so a burst of requests queues here instead of on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.exc import DataError, DisconnectionError, IntegrityError, OperationalError
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
        # Taken by another kind (or a tombstone not the caller's): the resource index's trigger
        # refuses the insert with the same ``uuid_taken`` answer (see mgmt.core.resourceindex).
        return None
    if ctx.resumed:
        return existing
    raise uuid_taken(uuid)


def uuid_taken(uuid: str) -> RingstackError:
    """The one answer for a caller-chosen uuid that is in use, whoever holds it and whatever it is."""
    return RingstackError(Sys.CONFLICT, f"resource uuid {uuid} is already in use", details={"uuid": uuid})


@dataclass(frozen=True, slots=True)
class Fence:
    """The ownership a transaction depends on: this node must still hold ``partition`` under
    fencing ``token``. Checked inside the transaction with a share lock on the partition row, so a
    takeover (which updates that row) waits for this transaction, and a stale owner's write fails.

    ``held`` tells, without a database round trip, whether this node still believes it holds the
    partition under ``token`` (it stops believing when its lease lapses or it took the partition
    again under a new token). None: the holder cannot tell, taken as held."""

    node_uuid: str
    partition: int
    token: int
    held: Callable[[], bool] | None = field(default=None, compare=False, repr=False)


# deadlock_detected, serialization_failure: the transaction lost a race and may simply be retried.
_RETRYABLE = frozenset({"40P01", "40001"})
# How many times a transaction that met a version conflict runs before the caller is told.
STALE_RETRIES = 3
log = logging.getLogger(__name__)

# Set by the owner path (mgmt.cluster.owner) around work about a resource: every transaction in
# it is fenced.
CURRENT_FENCE: ContextVar[Fence | None] = ContextVar("ringstack_fence", default=None)

_FENCE_SQL = text(
    "SELECT 1 FROM ring_partition WHERE partition = :p AND owner_node_uuid = :n AND token = :t FOR SHARE"
)


def check_fence(session: Session, fence: Fence) -> None:
    """Check ``fence`` now, in a statement of its own (``arm_fence`` saves that round trip)."""
    row = session.execute(_FENCE_SQL, {"p": fence.partition, "n": fence.node_uuid, "t": fence.token}).first()
    if row is None:
        raise _not_owner(fence)


def _not_owner(fence: Fence) -> RingstackError:
    return RingstackError(
        Sys.NOT_OWNER,
        f"this node no longer owns partition {fence.partition}; another node has taken over",
        details={"partition": fence.partition},
    )


# The fence check piggy-backed on a transaction's first statement: the same share-locking SELECT
# as ``check_fence``, sent in the same round trip as that statement (psycopg2 sends a query string
# with several statements as one message, and PostgreSQL runs them in order, in the transaction).
# It cannot hand a row count back, so a lost fence makes it fail instead: the CASE casts a text
# that is not a number (built from count(*), so it is never folded into a constant at planning).
_FENCE_MARK = "ringstack: fence lost"
_FENCE_RAISING = (
    f"SELECT CASE WHEN count(*) = 1 THEN 1 ELSE CAST('{_FENCE_MARK} ' || count(*) AS int) END FROM ("
    "SELECT 1 FROM ring_partition WHERE partition = %(ringstack_fence_p)s "
    "AND owner_node_uuid = %(ringstack_fence_n)s AND token = %(ringstack_fence_t)s FOR SHARE) AS fence"
)
_ARMED = "ringstack_armed_fence"  # key in the pooled connection's info


def arm_fence(session: Session, fence: Fence) -> None:
    """Check ``fence`` with the transaction's next statement, whatever it is, and fail the
    transaction with ``SYS.NOT_OWNER`` if this node no longer holds the partition under its token.

    The check is the one ``check_fence`` makes (so the safety argument of
    ``mgmt.cluster.ownership`` holds as it is: the share lock is taken before any write of the
    transaction and held until it ends); it just costs no round trip of its own. A transaction that
    sends no statement at all is not checked, and changes nothing."""
    session.info[_ARMED] = fence  # for the error, should the check fail
    session.connection().info[_ARMED] = fence


def _piggyback_fence(
    conn: Connection, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool
) -> tuple[str, Any]:
    fence: Fence | None = conn.info.pop(_ARMED, None)
    if fence is None:
        return statement, parameters
    values = {
        "ringstack_fence_p": fence.partition,
        "ringstack_fence_n": fence.node_uuid,
        "ringstack_fence_t": fence.token,
    }
    if executemany or not isinstance(parameters, dict) or not parameters:
        # Not a single statement with named parameters (a batch, a SAVEPOINT): on its own.
        cursor.execute(_FENCE_RAISING, values)
        return statement, parameters
    return f"{_FENCE_RAISING};\n{statement}", {**parameters, **values}


def _disarm(dbapi_connection: Any, record: Any) -> None:
    record.info.pop(_ARMED, None)  # armed by a transaction that sent nothing


def ownership_lost(exc: BaseException | None = None) -> bool:
    """Whether the fenced work running now (a job, a routed call) has lost its ownership: this node
    dropped the partition, or ``exc`` is a fenced write refused for it. Work that lost ownership
    must not undo what it did on agents: those commands carry no fencing token, so a stale owner's
    undo could destroy what the new owner has done or relies on. The new owner resumes the job and
    cleans up from the database's record instead."""
    fence = CURRENT_FENCE.get()
    if fence is None:
        return False
    if isinstance(exc, RingstackError) and exc.code == Sys.NOT_OWNER:
        return exc.details.get("partition") == fence.partition or _believes_lost(fence)
    return _believes_lost(fence)


def _believes_lost(fence: Fence) -> bool:
    return fence.held is not None and not fence.held()


# A pooled connection unused for longer than this is pinged before use (see ``_ping_when_idle``).
IDLE_PING_SECONDS = 10.0


def _ping_when_idle(engine: Engine, idle: float = IDLE_PING_SECONDS) -> None:
    """Pessimistic disconnect handling that costs nothing under load: ``pool_pre_ping`` sends a
    ``SELECT 1`` before every transaction (a round trip each; a VM create runs five), but a
    connection in constant use cannot have silently died since its last transaction, whose error
    would have invalidated it. Only one idle for a while (a database restart, a NAT timeout) is
    pinged; a dead one is replaced before the transaction starts, as with ``pool_pre_ping``."""

    @event.listens_for(engine, "checkin")
    def _idle_since(dbapi_connection: Any, record: Any) -> None:
        record.info["ringstack_idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        since = record.info.get("ringstack_idle_since")
        if since is None or time.monotonic() - since < idle:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:  # the pool replaces the connection and tries again
            raise DisconnectionError(f"an idle connection failed its ping: {exc}") from exc


class Database:
    def __init__(self, url: str, *, pool_size: int = 8) -> None:
        self.engine = create_engine(url, pool_size=pool_size, max_overflow=0, pool_recycle=1800)
        _ping_when_idle(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._pool = ThreadPoolExecutor(max_workers=pool_size, thread_name_prefix="db")
        # The cluster's heartbeats and lease renewals get connections and threads of their own: a
        # burst of slow request transactions must never starve them, or the node's lease would
        # lapse and it would fence itself while perfectly healthy (ZStack, likewise, heartbeats on a
        # dedicated connection).
        # Lease renewals keep the pre-ping: a handful a second, and a renewal lost to a connection
        # that died would bring the node closer to fencing itself.
        self._system_engine = create_engine(
            url, pool_size=2, max_overflow=0, pool_pre_ping=True, pool_recycle=1800
        )
        for engine in (self.engine, self._system_engine):
            event.listen(engine, "before_cursor_execute", _piggyback_fence, retval=True)
            event.listen(engine, "checkin", _disarm)
        self._system_sessions = sessionmaker(self._system_engine, expire_on_commit=False)
        self._system_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="db-cluster")

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(session, *args)`` in one transaction on a worker thread; commit unless it raises.

        A caller cancelled while its transaction runs gets the CancelledError only once that
        transaction has ended (a thread cannot be stopped half-way): so whatever the caller does
        next, a rollback say, sees the transaction's outcome instead of racing it. A transaction
        still waiting for a thread never starts."""
        return await self._submit(self._pool, fn, args, CURRENT_FENCE.get())

    async def run_unfenced(self, fn: Callable[..., T], *args: Any) -> T:
        """``run`` without the job's fence: for the job runner's own claims and records."""
        return await self._submit(self._pool, fn, args, None)

    async def run_system(self, fn: Callable[..., T], *args: Any) -> T:
        """Membership and lease work, on the cluster's own connections and threads."""
        return await self._submit(self._system_pool, fn, args, None, self._system_sessions)

    async def _submit(
        self,
        pool: ThreadPoolExecutor,
        fn: Callable[..., T],
        args: tuple[Any, ...],
        fence: Fence | None,
        sessions: sessionmaker[Session] | None = None,
    ) -> T:
        work = pool.submit(self._transaction, fn, args, fence, sessions)
        try:
            return await asyncio.wrap_future(work)
        except asyncio.CancelledError:
            # The cancellation tried to cancel ``work`` too; that fails once it runs.
            if not work.cancelled():
                running = asyncio.wrap_future(work)
                await asyncio.wait([running])
                if not running.cancelled():
                    running.exception()  # retrieved: the caller was cancelled, the outcome is moot
            raise

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
        # A version conflict (a row changed by another writer between this transaction's read and
        # its write, e.g. a host's reconcile touching a VM row that a stop is ending) is retried
        # from the start: a transaction body re-reads what it decides on, so running it again
        # on fresh rows is what the caller's own retry would do. Only then is it SYS.CONFLICT.
        for attempt in range(1, STALE_RETRIES + 1):
            try:
                return self._transaction_once(fn, args, fence, sessions)
            except StaleDataError:
                if attempt == STALE_RETRIES:
                    raise RingstackError(
                        Sys.CONFLICT, "the resource was changed concurrently; retry"
                    ) from None
                log.info(
                    "%s: a row changed under the transaction; retrying (%d)",
                    getattr(fn, "__name__", fn),
                    attempt,
                )
        raise AssertionError("unreachable")

    def _transaction_once(
        self,
        fn: Callable[..., T],
        args: tuple[Any, ...],
        fence: Fence | None,
        sessions: sessionmaker[Session] | None,
    ) -> T:
        session: Session | None = None
        try:
            with (sessions or self._sessions).begin() as session:
                if fence is not None:
                    arm_fence(session, fence)
                return fn(session, *args)
        except DataError as exc:
            armed = session.info.get(_ARMED) if session is not None else None
            if armed is not None and _FENCE_MARK in str(exc.orig):
                raise _not_owner(armed) from exc
            raise
        except IntegrityError as exc:
            diag = getattr(exc.orig, "diag", None)
            if getattr(diag, "constraint_name", None) == "pk_resource":
                # The resource index refused a uuid taken by a resource of any kind (or a tombstone,
                # see mgmt.core.resourceindex): one answer, naming nothing of the holder.
                words = str(getattr(diag, "message_primary", "") or "").split()
                uuid = words[2] if len(words) > 2 else ""
                raise uuid_taken(uuid) from exc
            raise RingstackError(
                Sys.CONFLICT, f"the change conflicts with existing data: {exc.orig}"
            ) from exc
        except OperationalError as exc:
            if getattr(exc.orig, "pgcode", None) in _RETRYABLE:
                raise RingstackError(
                    Sys.CONFLICT, f"concurrent transactions collided; retry: {exc.orig}"
                ) from exc
            raise RingstackError(Sys.UNAVAILABLE, f"database unavailable: {exc.orig}") from exc

    def session(self) -> Session:
        """A plain session for synchronous tools (CLI, tests); not for use on the event loop."""
        return self._sessions()

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._system_pool.shutdown(wait=True)
        self.engine.dispose()
        self._system_engine.dispose()
