"""The wire envelope: encoding, strict decoding, replies and remote errors."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bus.envelope import (
    KINDS,
    MAX_DEADLINE,
    MAX_ID_LENGTH,
    MAX_NAME_LENGTH,
    MAX_SHORT_STR_BYTES,
    Envelope,
    deadline_in,
    new_uuid,
)
from bus.errors import RingstackError, Sys

PROPERTY = settings(max_examples=200, deadline=None)

OPTIONAL_STR = ("service", "resource_uuid", "reply_to", "correlation_id", "session")
KNOWN_KEYS = ("id", "name", "kind", "body", "error", "ring_epoch", "deadline", "hops", "v", *OPTIONAL_STR)


def full_envelope() -> Envelope:
    return Envelope(
        name="CreateZone",
        kind="api",
        body={"name": "z1", "description": "first", "nested": {"a": [1, 2.5, None, True]}},
        id="0123456789abcdef0123456789abcdef",
        service="zone",
        resource_uuid="fedcba9876543210fedcba9876543210",
        ring_epoch=7,
        reply_to="ringstack.reply.node1",
        correlation_id="c" * 32,
        deadline=1_700_000_000.25,
        session="s" * 32,
        error={"code": "ZONE.IN_USE", "message": "zone is in use"},
        hops=2,
        v=3,
    )


def valid_wire(**changes: Any) -> dict[str, Any]:
    wire: dict[str, Any] = {"id": "abc", "name": "Ping", "kind": "call", "body": {}}
    wire.update(changes)
    return wire


def assert_malformed(data: bytes) -> RingstackError:
    with pytest.raises(RingstackError) as info:
        Envelope.decode(data)
    assert info.value.code == Sys.MALFORMED_MESSAGE
    assert info.value.message
    return info.value


# ---------------------------------------------------------------- round trips


def test_round_trip_keeps_every_field() -> None:
    env = full_envelope()
    decoded = Envelope.decode(env.encode())
    assert decoded == env
    for name in Envelope.__dataclass_fields__:
        assert getattr(decoded, name) == getattr(env, name), name


def test_encode_writes_snake_case_keys_and_the_camel_case_body_untouched() -> None:
    wire = orjson.loads(full_envelope().encode())
    assert set(wire) == set(KNOWN_KEYS)
    assert wire["body"]["nested"] == {"a": [1, 2.5, None, True]}
    assert wire["ring_epoch"] == 7
    assert wire["hops"] == 2


def test_encode_omits_unset_optional_fields() -> None:
    env = Envelope(name="Ping", kind="event")
    wire = orjson.loads(env.encode())
    assert wire == {"id": env.id, "name": "Ping", "kind": "event", "body": {}}
    assert Envelope.decode(env.encode()) == env


def test_minimal_wire_gets_defaults() -> None:
    env = Envelope.decode(b'{"id":"x","name":"Ping","kind":"reply"}')
    assert env.body == {}
    assert env.hops == 0
    assert env.ring_epoch is None
    assert env.deadline is None
    assert env.error is None
    for key in OPTIONAL_STR:
        assert getattr(env, key) is None


def test_integer_deadline_is_read_as_float() -> None:
    env = Envelope.decode(orjson.dumps(valid_wire(deadline=1_700_000_000)))
    assert env.deadline == 1_700_000_000.0
    assert type(env.deadline) is float


def test_explicit_nulls_for_optional_fields_are_accepted() -> None:
    wire = valid_wire(ring_epoch=None, deadline=None, error=None, **dict.fromkeys(OPTIONAL_STR))
    env = Envelope.decode(orjson.dumps(wire))
    assert env.ring_epoch is None
    assert env.deadline is None
    assert env.error is None


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_kind_decodes(kind: str) -> None:
    assert Envelope.decode(orjson.dumps(valid_wire(kind=kind))).kind == kind


def test_name_at_the_length_limit_is_accepted() -> None:
    name = "N" * MAX_NAME_LENGTH
    assert Envelope.decode(orjson.dumps(valid_wire(name=name))).name == name


def test_new_uuid_is_32_lowercase_hex_and_unique() -> None:
    ids = {new_uuid() for _ in range(100)}
    assert len(ids) == 100
    for value in ids:
        assert len(value) == 32
        assert set(value) <= set("0123456789abcdef")
    assert len(Envelope(name="a", kind="api").id) == 32


def test_remaining_and_expired() -> None:
    env = Envelope(name="a", kind="call", deadline=100.0)
    assert env.remaining(now=90.0) == 10.0
    assert env.remaining(now=110.0) == -10.0
    assert not env.expired(now=99.9)
    assert env.expired(now=100.0)
    assert env.expired(now=101.0)
    no_deadline = Envelope(name="a", kind="call")
    assert no_deadline.remaining() is None
    assert not no_deadline.expired(now=1e12)


def test_deadline_in_is_in_the_future() -> None:
    env = Envelope(name="a", kind="call", deadline=deadline_in(30))
    left = env.remaining()
    assert left is not None
    assert 29 < left <= 30
    assert not env.expired()


# ---------------------------------------------------------------- malformed input

MALFORMED: dict[str, bytes] = {
    "not json": b"{not json",
    "empty": b"",
    "truncated": b'{"id": "a", "name": "x"',
    "invalid utf-8": b'{"id": "\xff\xfe"}',
    "array": b"[]",
    "string": b'"hello"',
    "number": b"42",
    "null": b"null",
    "missing name": orjson.dumps({"id": "a", "kind": "api"}),
    "name not a string": orjson.dumps(valid_wire(name=5)),
    "name null": orjson.dumps(valid_wire(name=None)),
    "name empty": orjson.dumps(valid_wire(name="")),
    "name too long": orjson.dumps(valid_wire(name="N" * (MAX_NAME_LENGTH + 1))),
    "missing kind": orjson.dumps({"id": "a", "name": "x"}),
    "unknown kind": orjson.dumps(valid_wire(kind="request")),
    "kind wrong case": orjson.dumps(valid_wire(kind="API")),
    "kind a number": orjson.dumps(valid_wire(kind=1)),
    "kind null": orjson.dumps(valid_wire(kind=None)),
    "missing id": orjson.dumps({"name": "x", "kind": "api"}),
    "id empty": orjson.dumps(valid_wire(id="")),
    "id a number": orjson.dumps(valid_wire(id=12)),
    "id null": orjson.dumps(valid_wire(id=None)),
    "id longer than the job key": orjson.dumps(valid_wire(id="i" * (MAX_ID_LENGTH + 1))),
    "id with a space": orjson.dumps(valid_wire(id="a b")),
    "id with NUL": orjson.dumps(valid_wire(id="a\u0000")),
    "name with NUL": orjson.dumps(valid_wire(name="Ping\u0000")),
    "name not ASCII": orjson.dumps(valid_wire(name="P\u00efng")),
    "reply_to beyond a short string": orjson.dumps(valid_wire(reply_to="r" * (MAX_SHORT_STR_BYTES + 1))),
    "reply_to of 128 two-byte characters": orjson.dumps(valid_wire(reply_to="\u00e9" * 128)),
    "correlation_id beyond a short string": orjson.dumps(valid_wire(correlation_id="c" * 256)),
    "session with NUL": orjson.dumps(valid_wire(session="s\u0000")),
    "reply_to a lone surrogate": b'{"id":"a","name":"x","kind":"api","reply_to":"\\udcff"}',
    "deadline beyond the year 2286": orjson.dumps(valid_wire(deadline=MAX_DEADLINE * 2)),
    "deadline a huge integer": b'{"id":"a","name":"x","kind":"api","deadline":1' + b"0" * 30 + b"}",
    "v zero": orjson.dumps(valid_wire(v=0)),
    "v a string": orjson.dumps(valid_wire(v="1")),
    "v a float": orjson.dumps(valid_wire(v=1.0)),
    "body a list": orjson.dumps(valid_wire(body=[])),
    "body a string": orjson.dumps(valid_wire(body="x")),
    "body null": orjson.dumps(valid_wire(body=None)),
    "deadline a string": orjson.dumps(valid_wire(deadline="1700000000")),
    "deadline a bool": orjson.dumps(valid_wire(deadline=True)),
    "deadline a list": orjson.dumps(valid_wire(deadline=[1])),
    "ring_epoch a float": orjson.dumps(valid_wire(ring_epoch=1.5)),
    "ring_epoch negative": orjson.dumps(valid_wire(ring_epoch=-1)),
    "ring_epoch a string": orjson.dumps(valid_wire(ring_epoch="1")),
    "ring_epoch a bool": orjson.dumps(valid_wire(ring_epoch=True)),
    # orjson reads integers beyond 64 bits as floats; still not a valid epoch.
    "ring_epoch too big for int64": b'{"id":"a","name":"x","kind":"api","ring_epoch":1' + b"0" * 30 + b"}",
    "hops a float": orjson.dumps(valid_wire(hops=1.0)),
    "hops negative": orjson.dumps(valid_wire(hops=-1)),
    "hops a string": orjson.dumps(valid_wire(hops="1")),
    "hops a bool": orjson.dumps(valid_wire(hops=False)),
    "hops null": orjson.dumps(valid_wire(hops=None)),
    "error a string": orjson.dumps(valid_wire(error="boom")),
    "error a list": orjson.dumps(valid_wire(error=[])),
    **{f"{key} a number": orjson.dumps(valid_wire(**{key: 1})) for key in OPTIONAL_STR},
    **{f"{key} an object": orjson.dumps(valid_wire(**{key: {}})) for key in OPTIONAL_STR},
}


@pytest.mark.parametrize("data", list(MALFORMED.values()), ids=list(MALFORMED))
def test_malformed_envelopes_raise_malformed_message(data: bytes) -> None:
    assert_malformed(data)


def test_unknown_keys_are_ignored_so_a_newer_sender_is_understood() -> None:
    env = Envelope.decode(orjson.dumps(valid_wire(zeta=1, replyTo="q", v=2)))
    assert (env.name, env.reply_to, env.v) == ("Ping", None, 2)


def test_version_is_optional_on_read_and_written_only_when_not_1() -> None:
    assert Envelope.decode(orjson.dumps(valid_wire())).v == 1
    assert "v" not in orjson.loads(Envelope(name="Ping", kind="call").encode())
    assert orjson.loads(Envelope(name="Ping", kind="call", v=2).encode())["v"] == 2


@pytest.mark.parametrize(
    ("field", "wire"),
    [
        ("id", valid_wire(id="i" * 256)),
        ("reply_to", valid_wire(reply_to="r" * 256)),
        ("correlation_id", valid_wire(correlation_id="c" * 300)),
        ("deadline", valid_wire(deadline=1e300)),
    ],
)
def test_a_bad_field_is_named(field: str, wire: dict[str, Any]) -> None:
    err = assert_malformed(orjson.dumps(wire))
    assert err.details == {"field": field}
    assert field in err.message


def test_short_strings_at_their_limits_are_accepted() -> None:
    env = Envelope.decode(
        orjson.dumps(
            valid_wire(id="i" * MAX_ID_LENGTH, reply_to="\u00e9" * 127 + "r", correlation_id="c" * 255)
        )
    )
    assert len(env.id) == MAX_ID_LENGTH


@pytest.mark.parametrize("kind", [[], {}, ["api"], {"api": 1}])
def test_unhashable_kind_is_malformed(kind: Any) -> None:
    """A JSON array or object as ``kind`` must be rejected like any other bad kind."""
    assert_malformed(orjson.dumps(valid_wire(kind=kind)))


# ---------------------------------------------------------------- properties

JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
JSON_OBJECTS = st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=5)
# Objects whose keys are mostly envelope keys, so that generation reaches the deeper checks too.
ENVELOPE_LIKE = st.dictionaries(st.sampled_from(KNOWN_KEYS) | st.text(max_size=6), JSON_VALUES, max_size=12)
NEARLY_VALID = st.builds(
    lambda base, extra: {**base, **extra},
    st.fixed_dictionaries(
        {"id": st.text(max_size=4), "name": st.text(max_size=4), "kind": st.sampled_from(sorted(KINDS))}
    ),
    st.dictionaries(st.sampled_from(KNOWN_KEYS), JSON_VALUES, max_size=4),
)


def _decode_or_malformed(data: bytes) -> None:
    try:
        env = Envelope.decode(data)
    except RingstackError as exc:
        assert exc.code == Sys.MALFORMED_MESSAGE
        return
    # Whatever decodes must be a sound envelope.
    assert isinstance(env.name, str)
    assert 0 < len(env.name) <= MAX_NAME_LENGTH
    assert env.kind in KINDS
    assert isinstance(env.id, str)
    assert 0 < len(env.id) <= MAX_ID_LENGTH
    for key in OPTIONAL_STR:
        value = getattr(env, key)
        assert value is None or len(value.encode("utf-8")) <= MAX_SHORT_STR_BYTES
    assert isinstance(env.body, dict)
    assert type(env.hops) is int
    assert env.hops >= 0


@PROPERTY
@given(st.binary(max_size=200))
def test_decode_of_arbitrary_bytes_only_raises_malformed(data: bytes) -> None:
    _decode_or_malformed(data)


@PROPERTY
@given(JSON_VALUES)
def test_decode_of_arbitrary_json_values_only_raises_malformed(value: Any) -> None:
    _decode_or_malformed(orjson.dumps(value))


@PROPERTY
@given(JSON_OBJECTS)
def test_decode_of_arbitrary_json_objects_only_raises_malformed(obj: dict[str, Any]) -> None:
    _decode_or_malformed(orjson.dumps(obj))


@PROPERTY
@given(ENVELOPE_LIKE)
def test_decode_of_envelope_like_objects_only_raises_malformed(obj: dict[str, Any]) -> None:
    _decode_or_malformed(orjson.dumps(obj))


@PROPERTY
@given(NEARLY_VALID)
def test_decode_of_nearly_valid_envelopes_only_raises_malformed(obj: dict[str, Any]) -> None:
    _decode_or_malformed(orjson.dumps(obj))


OPT_TEXT = st.none() | st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=40)
TOKEN_CHARS = "ABCXYZabcxyz0189_.:@-"
VALID_ENVELOPES = st.builds(
    Envelope,
    name=st.text(TOKEN_CHARS, min_size=1, max_size=MAX_NAME_LENGTH),
    kind=st.sampled_from(sorted(KINDS)),
    body=JSON_OBJECTS,
    id=st.text(TOKEN_CHARS, min_size=1, max_size=MAX_ID_LENGTH),
    service=OPT_TEXT,
    resource_uuid=OPT_TEXT,
    ring_epoch=st.none() | st.integers(min_value=0, max_value=2**63 - 1),
    reply_to=OPT_TEXT,
    correlation_id=OPT_TEXT,
    deadline=st.none()
    | st.floats(max_value=MAX_DEADLINE, allow_nan=False, allow_infinity=False)
    | st.integers(-(2**53), int(MAX_DEADLINE)),
    session=OPT_TEXT,
    error=st.none() | JSON_OBJECTS,
    hops=st.integers(min_value=0, max_value=2**63 - 1),
    v=st.integers(min_value=1, max_value=2**63 - 1),
)


@PROPERTY
@given(VALID_ENVELOPES)
def test_decode_encode_round_trip(env: Envelope) -> None:
    data = env.encode()
    decoded = Envelope.decode(data)
    assert decoded == env
    # Once decoded (integer deadlines become floats), encoding is stable byte for byte.
    again = decoded.encode()
    assert Envelope.decode(again).encode() == again


# ---------------------------------------------------------------- replies and remote errors


def test_reply_correlates_by_request_id() -> None:
    request = Envelope(
        name="UpdateZone", kind="api", body={"uuid": "u"}, resource_uuid="u" * 32, reply_to="q"
    )
    reply = request.reply({"inventory": {"uuid": "u"}})
    assert reply.kind == "reply"
    assert reply.name == request.name
    assert reply.correlation_id == request.id
    assert reply.id != request.id
    assert reply.resource_uuid == request.resource_uuid
    assert reply.body == {"inventory": {"uuid": "u"}}
    assert reply.error is None
    assert reply.raise_for_error() == {"inventory": {"uuid": "u"}}
    # The correlation survives the wire.
    assert Envelope.decode(reply.encode()).correlation_id == request.id


def test_reply_without_body_has_an_empty_body() -> None:
    reply = Envelope(name="Ping", kind="call").reply()
    assert reply.body == {}
    assert reply.raise_for_error() == {}


def test_raise_for_error_raises_the_remote_error_with_its_chain() -> None:
    request = Envelope(name="DeleteZone", kind="api")
    root = RingstackError("DB.UNAVAILABLE", "database down", details={"host": "db1"})
    err = RingstackError("ZONE.IN_USE", "zone z has clusters", details={"clusters": 2}, cause=root)
    reply = Envelope.decode(request.reply(error=err).encode())
    assert reply.correlation_id == request.id
    with pytest.raises(RingstackError) as info:
        reply.raise_for_error()
    raised = info.value
    assert raised.code == "ZONE.IN_USE"
    assert raised.message == "zone z has clusters"
    assert raised.details == {"clusters": 2}
    assert raised.cause is not None
    assert raised.cause.code == "DB.UNAVAILABLE"
    assert raised.cause.details == {"host": "db1"}
    assert raised.cause.cause is None


def test_raise_for_error_with_an_unreadable_error_raises_malformed() -> None:
    reply = Envelope.decode(orjson.dumps(valid_wire(kind="reply", error={"message": "no code"})))
    with pytest.raises(RingstackError) as info:
        reply.raise_for_error()
    assert info.value.code == Sys.MALFORMED_MESSAGE


def test_raise_for_error_with_deeply_nested_garbage_from_the_wire_raises_malformed() -> None:
    """An error object whose ``code`` is unusable and that carries deep (but valid) JSON: decoding accepts
    it, and raise_for_error must answer MALFORMED_MESSAGE, not crash with RecursionError."""
    depth = 1000  # within orjson's nesting limit, so it is a legal wire message
    data = (
        b'{"id":"a","name":"x","kind":"reply","error":{"code":1,"junk":' + b"[" * depth + b"]" * depth + b"}}"
    )
    reply = Envelope.decode(data)
    with pytest.raises(RingstackError) as info:
        reply.raise_for_error()
    assert info.value.code == Sys.MALFORMED_MESSAGE
