"""Progress of a long API call on a terminal, from its job's events (``job.<uuid>.<state>``) and
its resource's events (``<kind>.<uuid>.<action>``), with the time left before the deadline.

A thread listens on its own connection (bound before the request is sent, so no event is missed)
and rewrites one status line on stderr; the caller's wait is bounded by the request's deadline,
never by this display.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import TYPE_CHECKING

from bus.errors import RingstackError

if TYPE_CHECKING:
    from bus.envelope import Envelope
    from mgmt.cli.connect import EventStream, Target


class Progress:
    def __init__(self, target: Target, env: Envelope, resource_uuid: str | None) -> None:
        patterns = [f"job.{env.id}.*"]
        if resource_uuid:
            patterns.append(f"*.{resource_uuid}.*")
        self.env = env
        self.stream: EventStream | None = target.events(*patterns)
        self.state = "sent"
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ringstack-progress", daemon=True)
        self._shown = False

    def start(self) -> None:
        assert self.stream is not None
        try:
            self.stream.__enter__()
        except RingstackError:
            self.stream = None  # no progress, but the call itself goes on
            return
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2)
        if self.stream is not None:
            self.stream.__exit__()
        if self._shown:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()

    def _run(self) -> None:
        assert self.stream is not None
        while not self._stop.is_set():
            try:
                got = self.stream.next(0.25)
            except RingstackError:
                return
            if got is not None:
                key = got[0]
                kind, action = key.split(".", 1)[0], key.rsplit(".", 1)[-1]
                self.state = action if kind == "job" else f"{kind} {action}"
            self._show()

    def _show(self) -> None:
        elapsed = time.monotonic() - self.started
        left = max(0.0, (self.env.deadline or time.time()) - time.time())
        sys.stderr.write(
            f"\r\x1b[K{self.env.name} job {self.env.id[:8]}: {self.state}  {elapsed:.1f} s"
            f" ({left:.0f} s left; Ctrl-C to cancel)"
        )
        sys.stderr.flush()
        self._shown = True
