"""A property-based fuzzer for ringstack's queues: hostile envelopes, bodies and AMQP properties.

Messages are generated with hypothesis and published raw (kombu, so AMQP properties can carry
anything, including bytes that are not UTF-8) onto a real queue of a real process: the API queue,
a node's own queue, an agent's queue. ``Fuzzer.fire`` sends a batch and waits for the replies; it
checks what must hold for each message that asked for an answer:

* exactly one reply arrives, before the request's deadline (plus ``slack``);
* it is a structured reply (an envelope of kind ``reply`` whose ``error``, if any, has a code) and
  never ``SYS.INTERNAL``: bad input is the client's mistake, never a crash.

A message "asks for an answer" when its reply address (the envelope's ``reply_to`` when that is a
valid address, else the AMQP ``reply_to`` property) is the fuzzer's reply queue. Every such
message carries a fresh token as its AMQP ``correlation_id`` and, when its envelope has a usable
id, as that id too, so the reply is known by the token whether or not the envelope could be read.

Bodies come from ``schema.registry`` (every API's fields, so a new API is fuzzed without a change
here) or from a target's own command models (``schema.agent.COMMANDS``). APIs that would reach
out of the machine if their body were valid (SSH to a host, an LDAP server, a download) always get
an unknown field, so they are refused at validation, before any handler runs.

Used by ``tests/integration/test_fuzz_api.py`` (bounded for CI) and ``bench/fuzz.py`` (10,000
messages, figures as JSON).
"""

from __future__ import annotations

import json
import sys
import time
import uuid as uuidlib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import kombu
import orjson
from hypothesis import strategies as st
from pydantic import BaseModel

from bus.envelope import Envelope
from bus.errors import RingstackError, Sys
from bus.topology import Topology
from schema.registry import load_all

# Placeholders the strategies leave in an envelope; ``Fuzzer`` fills them in when it sends.
TOKEN: Final = "\x00TOKEN"  # the message's token (a valid id)
OURS: Final = "\x00OURS"  # the fuzzer's reply queue
FRESH_DEADLINE: Final = "\x00DEADLINE"  # the fuzzer's timeout from when the message is sent

# APIs whose valid body would make the node reach beyond the machine (SSH, LDAP, a download,
# storage paths): always sabotaged with an unknown field. And LogOut, which would end the session
# the fuzzer uses.
REACHING_OUT: Final = frozenset(
    {
        "AddKVMHost",
        "UpdateKVMHost",
        "ReconnectHost",
        "AddLdapServer",
        "UpdateLdapServer",
        "LogInByLdap",
        "AddImage",
        "AddLocalDirBackupStorage",
        "AddSftpBackupStorage",
        "ReconnectBackupStorage",
        "AddLocalPrimaryStorage",
        "AddNfsPrimaryStorage",
        "AddSharedMountPointPrimaryStorage",
        "AddSimulatorHost",
        "LogOut",
        "UpdateAccount",
    }
)
SABOTAGE: Final = "fuzzUnknownField"

# ---------------------------------------------------------------- values

_INT64: Final = 2**63
TEXT = st.text(max_size=24)
HOSTILE_TEXT = st.one_of(
    st.text(st.characters(codec="utf-8"), max_size=40),
    st.text(st.characters(), max_size=12),  # lone surrogates: not encodable as UTF-8 JSON
    st.sampled_from(["\x00", "a\x00b", "%\x00", "' OR 1=1 --", "%", "_", "\\", "..", "*", "a" * 300]),
    st.integers(200, 5000).map(lambda n: "x" * n),
)
HOSTILE_INT = st.one_of(
    st.integers(-10, 10),
    st.integers(-(2**70), 2**70),
    st.sampled_from([_INT64, _INT64 - 1, -_INT64 - 1, 2**64, 10**30]),
)
SCALAR = st.one_of(
    st.none(), st.booleans(), HOSTILE_INT, st.floats(allow_nan=False, allow_infinity=False), HOSTILE_TEXT
)
JSON_VALUE = st.recursive(
    SCALAR,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(TEXT, children, max_size=4),
    max_leaves=10,
)
UUID = st.uuids().map(lambda u: u.hex)


def _plausible(annotation: Any) -> st.SearchStrategy[Any]:
    """A value of about the right type for a field: it gets past the first checks."""
    text = repr(annotation)
    if "Condition" in text:
        return st.lists(
            st.fixed_dictionaries(
                {
                    "name": st.sampled_from(["name", "uuid", "state", "x", "zone.name", "a.b.c.d"]),
                    "op": st.sampled_from(["=", "!=", "~=", "?=", ">", "=null", "bogus"]),
                },
                optional={"value": st.one_of(SCALAR, st.lists(SCALAR, max_size=3))},
            ),
            max_size=4,
        ) | st.lists(st.just({"name": "name", "op": "="}), min_size=65, max_size=70)
    if "list" in text:
        return st.lists(UUID | TEXT, max_size=3)
    if "bool" in text:
        return st.booleans()
    if "int" in text:
        return HOSTILE_INT
    if "float" in text:
        return st.floats(allow_nan=False, allow_infinity=False)
    if "0-9a-f" in text:
        return UUID
    return st.text("abcxyz-09", min_size=1, max_size=12)


# Values at the edges of what columns and comparisons take: what most often became SYS.INTERNAL.
EDGES = st.sampled_from(
    ["\x00", "a\x00b", "%\x00", "x" * 300, "é" * 3000, 2**63, -(2**63) - 1, 10**30, 2**63 - 1]
)


def body_strategy(model: type[BaseModel]) -> st.SearchStrategy[dict[str, Any]]:
    """A body for ``model``: some of its fields, each plausible or hostile, sometimes extra keys,
    often one field (or a query condition's value) set to an edge value."""
    names = [info.alias or name for name, info in model.model_fields.items()]
    fields = {
        (info.alias or name): st.one_of(*[_plausible(info.annotation)] * 3, JSON_VALUE)
        for name, info in model.model_fields.items()
    }

    required = {
        (info.alias or name): _plausible(info.annotation)
        for name, info in model.model_fields.items()
        if info.is_required()
    }

    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        if draw(st.booleans()):
            # Aimed: only the required fields, plausible, and one edge value where a column or a
            # comparison will meet it, so validation has nothing else to refuse first.
            body = draw(st.fixed_dictionaries(required))
            if "conditions" in names and draw(st.booleans()):
                op = draw(st.sampled_from(["=", "~=", "?=", ">", "!="]))
                value = draw(EDGES)
                field = draw(st.sampled_from(["name", "uuid", "state", "description"]))
                body["conditions"] = [{"name": field, "op": op, "value": [value] if op == "?=" else value}]
            elif names:
                body[draw(st.sampled_from(names))] = draw(EDGES)
            return body
        body = draw(st.fixed_dictionaries({}, optional=fields))
        if draw(st.integers(0, 4)) == 4:
            body.update(draw(st.dictionaries(TEXT, JSON_VALUE, min_size=1, max_size=2)))
        return body

    return build()


# ---------------------------------------------------------------- messages


@dataclass(frozen=True)
class Draft:
    """One message to send: either an envelope (a dict, with placeholders) or raw bytes."""

    envelope: dict[str, Any] | None
    raw: bytes | None
    properties: dict[str, Any]
    asks: bool  # whether the fuzzer's reply queue is its reply address

    def describe(self) -> str:
        what = self.envelope if self.envelope is not None else self.raw
        return repr(what)[:300] + f" props={self.properties!r}"[:300]


@dataclass(frozen=True)
class Target:
    """A queue to fuzz and the messages it serves."""

    queue: str
    kind: str  # the envelope kind a valid request has there ("api", "call")
    bodies: dict[str, st.SearchStrategy[dict[str, Any]]]
    sessions: tuple[str, ...] = ()  # sessions to use now and then (e.g. an admin's)
    sabotaged: frozenset[str] = frozenset()

    def names(self) -> list[str]:
        return sorted(self.bodies)


def api_target(topology: Topology, sessions: Sequence[str] = ()) -> Target:
    registry = load_all()
    bodies = {name: body_strategy(registry.get(name)) for name in registry.names()}  # type: ignore[arg-type]
    return Target(topology.api_queue.name, "api", bodies, tuple(sessions), REACHING_OUT)


def models_target(
    queue: str,
    kind: str,
    models: dict[str, type[BaseModel]],
    *,
    fixed: dict[str, Any] | None = None,
    sabotaged: Iterable[str] = (),
) -> Target:
    """A target serving these message models; ``fixed`` fields are set to the given value half the
    time (e.g. an agent's own ``hostUuid``, so commands get past the wrong-host check)."""
    bodies: dict[str, st.SearchStrategy[dict[str, Any]]] = {}
    for name, model in models.items():
        body = body_strategy(model)
        if fixed:
            body = st.builds(lambda b, keep: {**b, **(fixed if keep else {})}, body, st.booleans())
        bodies[name] = body
    return Target(queue, kind, bodies, (), frozenset(sabotaged))


BAD_IDS = st.sampled_from(["", "i" * 33, "i" * 256, "a b", "x\x00", "é" * 4, 5, None, [], {"a": 1}])
BAD_ADDRESSES = st.sampled_from(["r" * 256, "\x00", "é" * 200, 7, [], {"q": 1}, "\udcff"])
INVALID_UTF8_PROPS = st.sampled_from(["\udcff", "\udced\udcb3\udcbf", "a\udc80b", "\ud800"])


def _set(key: str, values: st.SearchStrategy[Any]) -> Callable[[dict[str, Any]], st.SearchStrategy[None]]:
    def mutate(env: dict[str, Any]) -> st.SearchStrategy[None]:
        return values.map(lambda value: env.__setitem__(key, value))

    return mutate


def _drop(env: dict[str, Any]) -> st.SearchStrategy[None]:
    return st.sampled_from(["name", "kind", "id", "body"]).map(lambda key: env.pop(key, None) and None)


BAD_NAMES = [
    "NoSuchApi",
    "ringstack.RunJob",
    "ringstack.NodeStatus",
    "agent.nope",
    "n" * 129,
    "Create Zone",
    "Zone\x00",
    "",
]
# Envelope-level mutations (an id mutation keeps the token out of the id: see the module docstring).
# The first is the one hypothesis prefers (and shrinks to): a field from a newer release, harmless.
MUTATIONS: Final[dict[str, Callable[[dict[str, Any]], st.SearchStrategy[None]]]] = {
    "unknown": _set("fromTheFuture", JSON_VALUE),
    "name": _set("name", st.one_of(st.sampled_from(BAD_NAMES), HOSTILE_TEXT, JSON_VALUE)),
    "kind": _set("kind", st.sampled_from(["call", "api", "reply", "event", "API", 3, None])),
    "id": _set("id", BAD_IDS),
    "body": _set("body", JSON_VALUE),
    "deadline": _set("deadline", st.sampled_from([time.time() - 5, 1e300, -1, "tomorrow", None, True])),
    "session": _set("session", st.one_of(UUID, HOSTILE_TEXT, st.integers(), st.none())),
    "correlation_id": _set("correlation_id", st.one_of(TEXT, BAD_ADDRESSES)),
    "service": _set("service", JSON_VALUE),
    "resource_uuid": _set("resource_uuid", st.one_of(UUID, JSON_VALUE)),
    "ring_epoch": _set("ring_epoch", st.one_of(HOSTILE_INT, JSON_VALUE)),
    "hops": _set("hops", st.one_of(HOSTILE_INT, JSON_VALUE)),
    "error": _set("error", JSON_VALUE),
    "v": _set("v", st.one_of(HOSTILE_INT, JSON_VALUE)),
    "drop": _drop,
}


def _envelopes(target: Target) -> st.SearchStrategy[tuple[dict[str, Any], bool]]:
    @st.composite
    def build(draw: st.DrawFn) -> tuple[dict[str, Any], bool]:
        # A well-formed envelope for one of the target's messages, then (in about half of them)
        # one to three envelope-level mutations: the bodies get exercised, and the envelope too.
        msg_name = draw(st.sampled_from(target.names()))
        body: Any = draw(target.bodies[msg_name])
        if msg_name in target.sabotaged and isinstance(body, dict):
            body = {**body, SABOTAGE: 1}
        env: dict[str, Any] = {"id": TOKEN, "name": msg_name, "kind": target.kind, "body": body}
        # Where the reply goes: ours in the envelope; absent or unusable (then the property); or a
        # valid address that is not ours (then the fuzzer expects nothing).
        reply_to = draw(st.sampled_from(["ours", "ours", "absent", "bad", "elsewhere"]))
        asks = reply_to != "elsewhere"
        if reply_to == "ours":
            env["reply_to"] = OURS
        elif reply_to == "bad":
            env["reply_to"] = draw(BAD_ADDRESSES)
        elif reply_to == "elsewhere":
            env["reply_to"] = f"fuzz.nowhere.{draw(st.integers(0, 9))}"
        if draw(st.booleans()):
            env["deadline"] = FRESH_DEADLINE
        if target.sessions and draw(st.integers(0, 3)) < 3:  # 0 is what hypothesis prefers
            env["session"] = draw(st.sampled_from(target.sessions))
        for mutation in draw(
            st.just([]) | st.just([]) | st.lists(st.sampled_from(list(MUTATIONS)), min_size=1, max_size=2)
        ):
            draw(MUTATIONS[mutation](env))
        return env, asks

    return build()


RAW_BODIES = st.one_of(
    st.binary(max_size=64),
    st.sampled_from([b"", b"null", b"[]", b'"x"', b"{", b"\xed\xb3\xbf", b"{}" * 3]),
    st.integers(100, 3000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),  # deep
    st.integers(100, 3000).map(lambda n: b"[" * n + b"]" * n),
    # Beyond the node's limit (1 MiB): rarely, they are costly to send.
    st.integers(0, 15).map(lambda n: b'{"name":"' + b"x" * ((1 << 20) + n) + b'"}' if n == 0 else b"{}"),
)


class Nested(list[Any]):
    """A header value nested ``depth`` lists deep (AMQP field arrays): pamqp's recursive decoder
    raised RecursionError on it and dropped the consumer's connection, again on every delivery."""

    def __init__(self, depth: int) -> None:
        value: Any = 1
        for _ in range(depth - 1):
            value = [value]
        super().__init__([value])
        self.depth = depth

    def __repr__(self) -> str:
        return f"<array nested {self.depth} deep>"


# From harmless to beyond any recursion limit (an encoded level is 5 bytes; the whole content
# header must fit in one 128 KiB frame, or the broker closes the publisher's connection). A
# message with properties that cannot be decoded is read without them (bus.amqp_decode), its
# reply_to and correlation_id too, so only messages that do not ask for a reply get those.
NESTED_READABLE: Final = st.sampled_from([2, 50]).map(Nested)
NESTED_ANY: Final = st.sampled_from([2, 50, 1200, 5000, 10_000]).map(Nested)


def _properties(asks: bool) -> st.SearchStrategy[dict[str, Any]]:
    optional = {
        "app_id": st.one_of(TEXT, INVALID_UTF8_PROPS),
        "type": st.one_of(TEXT, INVALID_UTF8_PROPS, st.just("x" * 255)),
        "message_id": st.one_of(TEXT, INVALID_UTF8_PROPS),
        "content_type": st.sampled_from(["application/json", "text/plain", "\udcff", ""]),
        "user_id": st.just("guest"),
        "headers": st.one_of(
            st.dictionaries(
                st.one_of(TEXT, INVALID_UTF8_PROPS), st.one_of(TEXT, st.integers(0, 10)), max_size=3
            ),
            # one nested value at most: two of the deepest would not fit in a frame
            st.dictionaries(
                st.one_of(TEXT, INVALID_UTF8_PROPS), NESTED_READABLE if asks else NESTED_ANY, max_size=1
            ),
        ),
        "priority": st.integers(0, 255),
        "delivery_mode": st.sampled_from([1, 2]),
    }
    if not asks:
        optional["reply_to"] = st.one_of(TEXT, INVALID_UTF8_PROPS)
        optional["correlation_id"] = st.one_of(TEXT, INVALID_UTF8_PROPS)
    return st.fixed_dictionaries({}, optional=optional)


def drafts(target: Target) -> st.SearchStrategy[Draft]:
    """One hostile message for ``target``: a fuzzed envelope (mostly) or raw bytes."""
    enveloped = _envelopes(target).flatmap(
        lambda pair: _properties(pair[1]).map(lambda props: Draft(pair[0], None, props, pair[1]))
    )
    raw = st.tuples(RAW_BODIES, st.booleans()).flatmap(
        lambda pair: _properties(pair[1]).map(lambda props: Draft(None, pair[0], props, pair[1]))
    )
    return st.one_of(*[enveloped] * 5, raw)


# ---------------------------------------------------------------- sending and checking


@dataclass
class Sent:
    token: str
    draft: Draft
    at: float
    deadline: float


@dataclass
class Figures:
    messages: int = 0
    asked: int = 0
    answered: int = 0
    duplicates: int = 0
    internal: int = 0
    unstructured: int = 0
    late: int = 0
    unanswered: int = 0
    latencies: list[float] = field(default_factory=list)
    codes: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies)
        return {
            "messages": self.messages,
            "asked_for_reply": self.asked,
            "answered": self.answered,
            "answered_pct": round(100.0 * self.answered / self.asked, 2) if self.asked else 100.0,
            "duplicates": self.duplicates,
            "internal_errors": self.internal,
            "unstructured_replies": self.unstructured,
            "late_replies": self.late,
            "unanswered": self.unanswered,
            "latency_max_s": round(lat[-1], 3) if lat else 0.0,
            "latency_p50_s": round(lat[len(lat) // 2], 3) if lat else 0.0,
            "latency_p99_s": round(lat[int(len(lat) * 0.99)], 3) if lat else 0.0,
            "reply_codes": dict(self.codes.most_common()),
        }


def _encode(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except (TypeError, orjson.JSONEncodeError):
        # Integers beyond 64 bits, lone surrogates: what a sloppier encoder would send.
        return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


class Fuzzer:
    """Publishes drafts raw onto a target's queue and collects the replies (one kombu connection)."""

    def __init__(
        self, broker_url: str, topology: Topology, *, timeout: float = 20.0, slack: float = 5.0
    ) -> None:
        self.topology = topology
        self.timeout = timeout
        self.slack = slack
        self.figures = Figures()
        self._conn = kombu.Connection(broker_url, heartbeat=0)
        self._conn.connect()
        self._channel = self._conn.channel()
        spec = topology.reply_queue("fuzz" + uuidlib.uuid4().hex)
        self.reply_queue = spec.name
        queue = kombu.Queue(spec.name, channel=self._channel, exclusive=True, auto_delete=True)
        queue.declare()
        for exchange, key in spec.bindings:  # agents reply through the replies exchange
            self._channel.exchange_declare(exchange, "direct", durable=True, auto_delete=False)
            self._channel.queue_bind(queue=spec.name, exchange=exchange, routing_key=key)
        self._consumer = kombu.Consumer(self._channel, queues=[queue], no_ack=True, on_message=self._on_reply)
        self._consumer.consume()
        self._producer = kombu.Producer(self._channel)
        self._waiting: dict[str, Sent] = {}
        self._answered: dict[str, Sent] = {}
        self._replies: defaultdict[str, int] = defaultdict(int)

    def close(self) -> None:
        self._conn.release()

    def _fill(self, value: Any, token: str) -> Any:
        if value == TOKEN:
            return token
        if value == OURS:
            return self.reply_queue
        if value == FRESH_DEADLINE:
            return time.time() + self.timeout
        return value

    def _publish(self, queue: str, draft: Draft, token: str) -> float:
        """Send one draft; returns its deadline (when the reply is due)."""
        deadline = time.time() + self.timeout
        if draft.envelope is not None:
            env = {k: self._fill(v, token) for k, v in draft.envelope.items()}
            if isinstance(env.get("deadline"), float) and env["deadline"] < 1e11:
                deadline = max(time.time(), min(deadline, env["deadline"]))
            body = _encode(env)
        else:
            assert draft.raw is not None
            body = draft.raw
        props = dict(draft.properties)
        if draft.asks:
            props["reply_to"] = self.reply_queue
            props["correlation_id"] = token
        limit = sys.getrecursionlimit()
        sys.setrecursionlimit(max(limit, 100_000))  # py-amqp encodes nested headers recursively
        try:
            self._producer.publish(body, routing_key=queue, content_encoding="binary", retry=False, **props)
        except (ValueError, TypeError, UnicodeError, OverflowError):
            # The client library refused the properties themselves: nothing reached the broker.
            props = {k: v for k, v in props.items() if k in ("reply_to", "correlation_id")}
            self._producer.publish(body, routing_key=queue, content_encoding="binary", retry=False, **props)
        finally:
            sys.setrecursionlimit(limit)
        return deadline

    def fire(self, target: Target, batch: Sequence[Draft], *, check: bool = True) -> None:
        """Send a batch, wait for the replies it asked for, and check them (raises AssertionError;
        with ``check=False`` the problems are only counted in ``figures``)."""
        for draft in batch:
            token = uuidlib.uuid4().hex
            sent_at = time.time()
            deadline = self._publish(target.queue, draft, token)
            self.figures.messages += 1
            if draft.asks:
                self.figures.asked += 1
                self._waiting[token] = Sent(token, draft, sent_at, deadline)
        self._drain(
            until=lambda: not self._waiting,
            limit=max((s.deadline for s in self._waiting.values()), default=time.time()) + self.slack,
        )
        missing = list(self._waiting.values())
        self._waiting.clear()
        self.figures.unanswered += len(missing)
        problems = [f"no reply to {s.draft.describe()}" for s in missing]
        problems += self.figures.failures
        self.figures.failures = []
        assert not check or not problems, "\n".join(problems[:10])

    def settle(self, seconds: float = 1.0) -> None:
        """Drain for a while: late or duplicate replies show up in the figures."""
        self._drain(until=lambda: False, limit=time.time() + seconds)
        assert not self.figures.failures, "\n".join(self.figures.failures[:10])

    def _drain(self, until: Callable[[], bool], limit: float) -> None:
        while not until():
            left = limit - time.time()
            if left <= 0:
                return
            try:
                self._conn.drain_events(timeout=min(left, 1.0))
            except TimeoutError:
                continue

    def _on_reply(self, message: Any) -> None:
        now = time.time()
        try:
            env = Envelope.decode(message.body)
        except RingstackError:
            self.figures.unstructured += 1
            self.figures.failures.append(f"unreadable reply {message.body[:200]!r}")
            return
        token = env.correlation_id or ""
        self._replies[token] += 1
        if self._replies[token] > 1:
            self.figures.duplicates += 1
            self.figures.failures.append(f"duplicate reply for {token}")
            return
        sent = self._waiting.pop(token, None)
        if sent is None:
            return  # a reply to a message that did not ask us (the fuzzer does not count it)
        self.figures.answered += 1
        self.figures.latencies.append(now - sent.at)
        self._answered[token] = sent
        if env.kind != "reply" or (env.error is not None and not isinstance(env.error.get("code"), str)):
            self.figures.unstructured += 1
            self.figures.failures.append(f"unstructured reply {env!r} to {sent.draft.describe()}")
        code = env.error["code"] if env.error is not None else "OK"
        self.figures.codes[str(code)] += 1
        if code == Sys.INTERNAL:
            self.figures.internal += 1
            self.figures.failures.append(f"SYS.INTERNAL {env.error} for {sent.draft.describe()}")
        if now > sent.deadline + self.slack:
            self.figures.late += 1
            self.figures.failures.append(f"late reply ({now - sent.at:.1f} s) to {sent.draft.describe()}")
