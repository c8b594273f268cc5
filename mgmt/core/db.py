"""The database, reached from asyncio through a bounded thread pool.

psycopg2 blocks, so every transaction runs in a worker thread; the pool has as many threads as the
engine has connections, so a burst of requests queues here instead of on the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import create_engine
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


class Database:
    def __init__(self, url: str, *, pool_size: int = 8) -> None:
        self.engine = create_engine(
            url, pool_size=pool_size, max_overflow=0, pool_pre_ping=True, pool_recycle=1800
        )
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._pool = ThreadPoolExecutor(max_workers=pool_size, thread_name_prefix="db")

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(session, *args)`` in one transaction on a worker thread; commit unless it raises."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._transaction, fn, args)

    def _transaction(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        try:
            with self._sessions.begin() as session:
                return fn(session, *args)
        except StaleDataError as exc:
            raise RingstackError(Sys.CONFLICT, "the resource was changed concurrently; retry") from exc
        except IntegrityError as exc:
            raise RingstackError(
                Sys.CONFLICT, f"the change conflicts with existing data: {exc.orig}"
            ) from exc
        except OperationalError as exc:
            raise RingstackError(Sys.UNAVAILABLE, f"database unavailable: {exc.orig}") from exc

    def session(self) -> Session:
        """A plain session for synchronous tools (CLI, tests); not for use on the event loop."""
        return self._sessions()

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self.engine.dispose()
