"""The agent's libvirt connection: used from a bounded thread pool, reopened when it dies, and
feeding domain lifecycle events to the asyncio loop.

libvirt calls block (a shutdown, a migration, a slow libvirtd), so none runs on the event loop:
``call`` runs a function of the connection in the pool. Lifecycle events need libvirt's own event
loop: it is registered once per process (``virEventRegisterDefaultImpl`` must precede the first
``open``) and run by a daemon thread; each event is handed to the asyncio loop with
``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import libvirt

from bus.errors import RingstackError
from schema.agent import AgentErrors

log = logging.getLogger(__name__)

T = TypeVar("T")
# (domain name, libvirt lifecycle event, detail), called on the asyncio loop
LifecycleCallback = Callable[[str, int, int], None]

_events_lock = threading.Lock()
_events_started = False


def _ignore_libvirt_error(_ctx: Any, _err: Any) -> None:
    """libvirt prints every error to stderr by default; ours are raised and logged where handled."""


def _run_libvirt_events() -> None:
    while True:
        try:
            libvirt.virEventRunDefaultImpl()
        except Exception:  # never let the event thread die: reports depend on it
            log.exception("libvirt event loop iteration failed")


def ensure_event_loop() -> None:
    """Register libvirt's default event implementation and its thread, once per process."""
    global _events_started
    with _events_lock:
        if _events_started:
            return
        libvirt.registerErrorHandler(_ignore_libvirt_error, None)
        libvirt.virEventRegisterDefaultImpl()
        threading.Thread(target=_run_libvirt_events, name="libvirt-events", daemon=True).start()
        _events_started = True


def hypervisor_error(action: str, exc: libvirt.libvirtError) -> RingstackError:
    return RingstackError(
        AgentErrors.HYPERVISOR_ERROR,
        f"{action}: {exc.get_error_message() or exc}",
        details={"libvirtCode": exc.get_error_code(), "libvirtDomain": exc.get_error_domain()},
    )


class Hypervisor:
    def __init__(self, uri: str, *, workers: int = 8, on_lifecycle: LifecycleCallback | None = None) -> None:
        self.uri = uri
        self.on_lifecycle = on_lifecycle
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="libvirt")
        self._lock = threading.Lock()
        self._conn: libvirt.virConnect | None = None
        self._callback_id: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.opened = 0  # how many times a connection was opened; tests watch reconnects

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        ensure_event_loop()
        await self.call(lambda conn: None, f"connect to libvirt at {self.uri}")

    async def close(self) -> None:
        await self.blocking(self._close_connection)
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def call(self, fn: Callable[[libvirt.virConnect], T], action: str) -> T:
        """Run ``fn(connection)`` in the pool; a libvirt error becomes AGENT.HYPERVISOR_ERROR."""

        def run() -> T:
            return fn(self._connection())

        try:
            return await self.blocking(run)
        except libvirt.libvirtError as exc:
            raise hypervisor_error(action, exc) from None

    async def blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """Run any blocking function (disk, subprocess) in the pool, off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # ------------------------------------------------------------------ in pool threads

    def _connection(self) -> libvirt.virConnect:
        with self._lock:
            conn = self._conn
            if conn is not None:
                try:
                    if conn.isAlive():
                        return conn
                except libvirt.libvirtError:
                    pass
                log.warning("libvirt connection to %s died; reopening", self.uri)
                self._close_connection_locked()
            conn = libvirt.open(self.uri)
            self._callback_id = conn.domainEventRegisterAny(
                None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_event, None
            )
            self._conn = conn
            self.opened += 1
            return conn

    def _close_connection(self) -> None:
        with self._lock:
            self._close_connection_locked()

    def _close_connection_locked(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            if self._callback_id is not None:
                conn.domainEventDeregisterAny(self._callback_id)
            conn.close()
        except libvirt.libvirtError as exc:
            log.info("closing the libvirt connection: %s", exc)
        self._callback_id = None

    def _on_event(self, _conn: Any, dom: libvirt.virDomain, event: int, detail: int, _opaque: Any) -> None:
        # On libvirt's event thread: hand over to the asyncio loop, do nothing else here.
        loop, callback = self._loop, self.on_lifecycle
        if loop is None or callback is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(callback, dom.name(), event, detail)
