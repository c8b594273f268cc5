"""The one JSON envelope every ringstack message travels in.

Fields (ARCHITECTURE.md, "The wire protocol"): ``id``, ``name``, ``kind``, ``service``,
``resource_uuid``, ``ring_epoch``, ``reply_to``, ``correlation_id``, ``deadline`` (absolute Unix
seconds), ``session``, ``body``, ``error``, plus ``hops`` (how often it was forwarded between nodes)
and ``v`` (the envelope version, see ``ENVELOPE_VERSION``). Envelope keys are snake_case; bodies use
the API's camelCase field names. Unknown envelope keys are ignored (a newer sender's additions); only
client API bodies reject unknown fields (``schema.api.base``).

Where replies go, for every kind of request: to the envelope's ``reply_to`` when it has one, else to
the AMQP ``reply_to`` property of the message that carried it (``AsyncBus`` fills ``reply_to`` from
the property before any handler runs, so a job stores and answers the same address as a read); a
request with neither is not answered. The reply's ``correlation_id`` is the request's ``id``; when
the envelope could not be read at all, the AMQP ``correlation_id`` (else ``message_id``) property.

Everything is bounded here, at the edge: names and ids are short ASCII tokens (``id`` fits the job
key), addresses fit an AMQP short string, no string carries NUL or bytes that are not UTF-8,
numbers fit their columns. A violation is ``SYS.MALFORMED_MESSAGE`` naming the field.

Decoding is hand-written rather than pydantic because it runs for every message on the hot path;
the body is validated later, by whoever handles the message, against its own schema.
"""

from __future__ import annotations

import math
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Final, TypeGuard

import orjson

from bus.errors import RingstackError, Sys

KINDS: Final = frozenset({"api", "call", "reply", "event"})

# The envelope format this code writes. Readers accept any version and ignore fields they do not
# know, so adjacent releases coexist during a rolling upgrade; a reader that meets a message it
# cannot serve answers with an error, as for any other bad input. Version 1 is the format from
# before the field existed, so ``v`` is written only when it is not 1 (and absent means 1).
ENVELOPE_VERSION: Final = 1

_OPTIONAL_STR: Final = ("service", "resource_uuid", "reply_to", "correlation_id", "session")
MAX_NAME_LENGTH: Final = 128
# The id is the key of the job a mutating API becomes (``job.uuid``, varchar(32)).
MAX_ID_LENGTH: Final = 32
# Message names and ids: printable ASCII, no spaces (they travel as AMQP short strings).
_TOKEN: Final = re.compile(r"[A-Za-z0-9_.:@-]+")
# Optional strings that travel as AMQP short strings (routing key, correlation id) or are kept in
# 255-character columns.
MAX_SHORT_STR_BYTES: Final = 255
# An absolute deadline beyond this (Unix seconds, the year 2286) is nonsense, and would overflow
# the per-message TTL a forwarded request carries.
MAX_DEADLINE: Final = 1e10
_MAX_INT64: Final = 2**63 - 1


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
    v: int = ENVELOPE_VERSION

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
        if self.v != 1:
            wire["v"] = self.v
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
        name = wire.get("name")
        if not is_token(name, MAX_NAME_LENGTH):
            raise malformed(
                f"'name' must be 1-{MAX_NAME_LENGTH} characters of A-Z a-z 0-9 _ . : @ -", field="name"
            )
        kind = wire.get("kind")
        if not isinstance(kind, str) or kind not in KINDS:
            raise malformed(f"'kind' must be one of {sorted(KINDS)}", field="kind")
        msg_id = wire.get("id")
        if not is_token(msg_id, MAX_ID_LENGTH):
            raise malformed(f"'id' must be 1-{MAX_ID_LENGTH} characters of A-Z a-z 0-9 _ . : @ -", field="id")
        body = wire.get("body", {})
        if not isinstance(body, dict):
            raise malformed("'body' must be a JSON object", field="body")
        for key in _OPTIONAL_STR:
            value = wire.get(key)
            if value is not None and not is_short_str(value):
                raise malformed(
                    f"'{key}' must be a string of at most {MAX_SHORT_STR_BYTES} UTF-8 bytes without NUL",
                    field=key,
                )
        ring_epoch = wire.get("ring_epoch")
        if ring_epoch is not None and not _is_count(ring_epoch):
            raise malformed("'ring_epoch' must be a non-negative 64-bit integer", field="ring_epoch")
        deadline = wire.get("deadline")
        if deadline is not None:
            if type(deadline) not in (int, float) or not math.isfinite(deadline) or deadline > MAX_DEADLINE:
                raise malformed(
                    f"'deadline' must be a number of absolute Unix seconds up to {MAX_DEADLINE:.0f}",
                    field="deadline",
                )
            deadline = float(deadline)
        hops = wire.get("hops", 0)
        if not _is_count(hops):
            raise malformed("'hops' must be a non-negative 64-bit integer", field="hops")
        error = wire.get("error")
        if error is not None and not isinstance(error, dict):
            raise malformed("'error' must be a JSON object", field="error")
        version = wire.get("v", 1)
        if not _is_count(version) or version < 1:
            raise malformed("'v' must be a positive integer", field="v")
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
            v=version,
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


def malformed(reason: str, *, field: str | None = None) -> RingstackError:
    return RingstackError(Sys.MALFORMED_MESSAGE, reason, details={"field": field} if field else None)


def is_token(value: Any, max_length: int) -> TypeGuard[str]:
    """A message name or id: a short run of printable ASCII without spaces."""
    return isinstance(value, str) and len(value) <= max_length and _TOKEN.fullmatch(value) is not None


def is_short_str(value: Any) -> TypeGuard[str]:
    """Whether ``value`` can travel as an AMQP short string: text of at most 255 UTF-8 bytes, no NUL
    (and no surrogates, which is how ``bus.amqp_decode`` keeps bytes that were not UTF-8)."""
    if not isinstance(value, str) or len(value) > MAX_SHORT_STR_BYTES or "\x00" in value:
        return False
    try:
        return len(value.encode("utf-8")) <= MAX_SHORT_STR_BYTES
    except UnicodeEncodeError:
        return False


def _is_count(value: Any) -> bool:
    return type(value) is int and 0 <= value <= _MAX_INT64


def deadline_in(seconds: float) -> float:
    return time.time() + seconds
