"""The one JSON envelope every ringstack message travels in.

Fields (ARCHITECTURE.md, "The wire protocol"): ``id``, ``name``, ``kind``, ``service``,
``resource_uuid``, ``ring_epoch``, ``reply_to``, ``correlation_id``, ``deadline`` (absolute Unix
seconds), ``session``, ``body``, ``error``, plus ``hops`` (how often it was forwarded between nodes).
Envelope keys are snake_case; bodies use the API's camelCase field names.

Decoding is hand-written rather than pydantic because it runs for every message on the hot path;
the body is validated later, by whoever handles the message, against its own schema.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from bus.errors import RingstackError, Sys

KINDS: Final = frozenset({"api", "call", "reply", "event"})

_OPTIONAL_STR: Final = ("service", "resource_uuid", "reply_to", "correlation_id", "session")
_KNOWN_KEYS: Final = frozenset(
    {"id", "name", "kind", "body", "error", "ring_epoch", "deadline", "hops", *_OPTIONAL_STR}
)
MAX_NAME_LENGTH: Final = 128


def new_uuid() -> str:
    """A resource or message id: 32 lowercase hex digits, as ZStack spells them."""
    return uuid.uuid4().hex


@dataclass(slots=True)
class Envelope:
    name: str
    kind: str
    body: dict[str, Any] = field(default_factory=dict)
    id: str = field(default_factory=new_uuid)
    service: str | None = None
    resource_uuid: str | None = None
    ring_epoch: int | None = None
    reply_to: str | None = None
    correlation_id: str | None = None
    deadline: float | None = None
    session: str | None = None
    error: dict[str, Any] | None = None
    hops: int = 0

    def encode(self) -> bytes:
        wire: dict[str, Any] = {"id": self.id, "name": self.name, "kind": self.kind, "body": self.body}
        for key in _OPTIONAL_STR:
            value = getattr(self, key)
            if value is not None:
                wire[key] = value
        if self.ring_epoch is not None:
            wire["ring_epoch"] = self.ring_epoch
        if self.deadline is not None:
            wire["deadline"] = self.deadline
        if self.error is not None:
            wire["error"] = self.error
        if self.hops:
            wire["hops"] = self.hops
        return orjson.dumps(wire)

    @classmethod
    def decode(cls, data: bytes) -> Envelope:
        """Parse and check an envelope; raise ``SYS.MALFORMED_MESSAGE`` saying what is wrong."""
        try:
            wire = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise malformed(f"not JSON: {exc}") from None
        if not isinstance(wire, dict):
            raise malformed("the envelope must be a JSON object")
        unknown = wire.keys() - _KNOWN_KEYS
        if unknown:
            raise malformed(f"unknown envelope fields: {', '.join(sorted(unknown))}")
        name = wire.get("name")
        if not isinstance(name, str) or not name or len(name) > MAX_NAME_LENGTH:
            raise malformed("'name' must be a non-empty string of at most 128 characters")
        kind = wire.get("kind")
        if not isinstance(kind, str) or kind not in KINDS:
            raise malformed(f"'kind' must be one of {sorted(KINDS)}")
        msg_id = wire.get("id")
        if not isinstance(msg_id, str) or not msg_id:
            raise malformed("'id' must be a non-empty string")
        body = wire.get("body", {})
        if not isinstance(body, dict):
            raise malformed("'body' must be a JSON object")
        for key in _OPTIONAL_STR:
            value = wire.get(key)
            if value is not None and not isinstance(value, str):
                raise malformed(f"'{key}' must be a string")
        ring_epoch = wire.get("ring_epoch")
        if ring_epoch is not None and (type(ring_epoch) is not int or ring_epoch < 0):
            raise malformed("'ring_epoch' must be a non-negative integer")
        deadline = wire.get("deadline")
        if deadline is not None:
            if type(deadline) not in (int, float):
                raise malformed("'deadline' must be a number (absolute Unix seconds)")
            deadline = float(deadline)
        hops = wire.get("hops", 0)
        if type(hops) is not int or hops < 0:
            raise malformed("'hops' must be a non-negative integer")
        error = wire.get("error")
        if error is not None and not isinstance(error, dict):
            raise malformed("'error' must be a JSON object")
        return cls(
            name=name,
            kind=kind,
            body=body,
            id=msg_id,
            service=wire.get("service"),
            resource_uuid=wire.get("resource_uuid"),
            ring_epoch=ring_epoch,
            reply_to=wire.get("reply_to"),
            correlation_id=wire.get("correlation_id"),
            deadline=deadline,
            session=wire.get("session"),
            error=error,
            hops=hops,
        )

    def remaining(self, now: float | None = None) -> float | None:
        """Seconds left before the deadline (negative when past), or None without a deadline."""
        if self.deadline is None:
            return None
        return self.deadline - (time.time() if now is None else now)

    def expired(self, now: float | None = None) -> bool:
        left = self.remaining(now)
        return left is not None and left <= 0

    def reply(self, body: dict[str, Any] | None = None, error: RingstackError | None = None) -> Envelope:
        """The reply to this request, addressed back by correlation id."""
        return Envelope(
            name=self.name,
            kind="reply",
            body=body or {},
            correlation_id=self.id,
            resource_uuid=self.resource_uuid,
            error=error.to_wire() if error is not None else None,
        )

    def raise_for_error(self) -> dict[str, Any]:
        """The reply body, or the remote error raised as a RingstackError."""
        if self.error is not None:
            raise RingstackError.from_wire(self.error)
        return self.body


def malformed(reason: str) -> RingstackError:
    return RingstackError(Sys.MALFORMED_MESSAGE, reason)


def deadline_in(seconds: float) -> float:
    return time.time() + seconds
