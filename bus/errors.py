"""Stable error codes and the error type that travels on the wire.

An error on the wire is ``{code, message, details, cause}``; ``cause`` is another such error (the
chain that led to it). Tracebacks never travel: a bug becomes ``SYS.INTERNAL`` with the request id
so an operator can find the log line.

Codes are stable strings ``<GROUP>.<NAME>``. ``SYS`` codes live here; each service declares its
own group next to its handlers (for example ``ZONE.IN_USE``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class Sys:
    """Codes every part of ringstack may answer with."""

    TIMEOUT = "SYS.TIMEOUT"  # the deadline passed before an answer came
    INVALID_ARGUMENT = "SYS.INVALID_ARGUMENT"  # the body failed validation
    NOT_FOUND = "SYS.NOT_FOUND"  # the resource named does not exist (or is not visible)
    PERMISSION_DENIED = "SYS.PERMISSION_DENIED"
    AUTH_REQUIRED = "SYS.AUTH_REQUIRED"  # no session, or an expired one
    NOT_OWNER = "SYS.NOT_OWNER"  # this node does not own the resource under its ring view
    CONFLICT = "SYS.CONFLICT"  # a concurrent change won (optimistic concurrency) or a uniqueness clash
    RESOURCE_IN_USE = "SYS.RESOURCE_IN_USE"  # deleting would orphan children (Permissive mode)
    BUSY = "SYS.BUSY"  # a bounded queue is full; retry later
    UNKNOWN_MESSAGE = "SYS.UNKNOWN_MESSAGE"  # no handler for that message name
    MALFORMED_MESSAGE = "SYS.MALFORMED_MESSAGE"  # not a valid envelope
    MESSAGE_TOO_LARGE = "SYS.MESSAGE_TOO_LARGE"
    UNAVAILABLE = "SYS.UNAVAILABLE"  # the broker or the target cannot be reached now
    CONNECTION_LOST = "SYS.CONNECTION_LOST"  # the connection died with the call in flight; outcome unknown
    SHUTTING_DOWN = "SYS.SHUTTING_DOWN"  # the node is draining and takes no new work
    CANCELLED = "SYS.CANCELLED"
    INTERNAL = "SYS.INTERNAL"  # a bug; the message carries the request id to find the log


class RingstackError(Exception):
    """An error with a stable code; the only exception type that crosses process boundaries."""

    __slots__ = ("cause", "code", "details", "message")

    def __init__(
        self,
        code: str,
        message: str,
        *,
        details: Mapping[str, Any] | None = None,
        cause: RingstackError | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.details: dict[str, Any] = dict(details or {})
        self.cause = cause

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            wire["details"] = self.details
        if self.cause is not None:
            wire["cause"] = self.cause.to_wire()
        return wire

    @classmethod
    def from_wire(cls, wire: Any, _depth: int = 0) -> RingstackError:
        """Rebuild an error from its wire form; anything unexpected becomes a MALFORMED_MESSAGE error."""
        if not isinstance(wire, Mapping) or not isinstance(wire.get("code"), str):
            # No repr of the input: it may be hostile (deeply nested, huge).
            return cls(Sys.MALFORMED_MESSAGE, f"reply carried an unreadable error (a {type(wire).__name__})")
        details = wire.get("details")
        cause_wire = wire.get("cause")
        cause = None
        # A bounded depth keeps a hostile or looping cause chain from exhausting the stack.
        if cause_wire is not None and _depth < 16:
            cause = cls.from_wire(cause_wire, _depth + 1)
        return cls(
            wire["code"],
            str(wire.get("message", "")),
            details=details if isinstance(details, Mapping) else None,
            cause=cause,
        )

    def chain(self) -> list[RingstackError]:
        """This error followed by its causes, outermost first."""
        out: list[RingstackError] = []
        err: RingstackError | None = self
        while err is not None:
            out.append(err)
            err = err.cause
        return out

    def __repr__(self) -> str:
        return f"RingstackError({self.code!r}, {self.message!r})"


def invalid_argument(message: str, **details: Any) -> RingstackError:
    return RingstackError(Sys.INVALID_ARGUMENT, message, details=details)


def not_found(kind: str, uuid: str) -> RingstackError:
    return RingstackError(Sys.NOT_FOUND, f"{kind} {uuid} not found", details={"kind": kind, "uuid": uuid})
