"""RingstackError: wire form, cause chains and hostile input."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bus.errors import RingstackError, Sys, invalid_argument, not_found

MAX_CAUSE_DEPTH = 16  # from_wire follows at most this many causes below the outermost error


def three_level_error() -> RingstackError:
    root = RingstackError("DB.UNAVAILABLE", "connection refused", details={"host": "db1", "port": 5432})
    middle = RingstackError("SYS.UNAVAILABLE", "cannot reach the database", cause=root)
    return RingstackError("ZONE.IN_USE", "zone is in use", details={"clusters": ["c1", "c2"]}, cause=middle)


def test_constructor_fields_and_str() -> None:
    err = RingstackError("ZONE.IN_USE", "zone is in use", details={"n": 1})
    assert err.code == "ZONE.IN_USE"
    assert err.message == "zone is in use"
    assert err.details == {"n": 1}
    assert err.cause is None
    assert str(err) == "ZONE.IN_USE: zone is in use"
    assert repr(err) == "RingstackError('ZONE.IN_USE', 'zone is in use')"


def test_details_are_copied_not_shared() -> None:
    details = {"n": 1}
    err = RingstackError("A.B", "m", details=details)
    details["n"] = 2
    assert err.details == {"n": 1}
    assert RingstackError("A.B", "m").details == {}


def test_to_wire_shape() -> None:
    wire = three_level_error().to_wire()
    assert wire == {
        "code": "ZONE.IN_USE",
        "message": "zone is in use",
        "details": {"clusters": ["c1", "c2"]},
        "cause": {
            "code": "SYS.UNAVAILABLE",
            "message": "cannot reach the database",
            "cause": {
                "code": "DB.UNAVAILABLE",
                "message": "connection refused",
                "details": {"host": "db1", "port": 5432},
            },
        },
    }


def test_to_wire_omits_empty_details_and_missing_cause() -> None:
    assert RingstackError("A.B", "m").to_wire() == {"code": "A.B", "message": "m"}


def test_round_trip_with_a_cause_chain_through_json() -> None:
    original = three_level_error()
    rebuilt = RingstackError.from_wire(orjson.loads(orjson.dumps(original.to_wire())))
    assert [(e.code, e.message, e.details) for e in rebuilt.chain()] == [
        (e.code, e.message, e.details) for e in original.chain()
    ]
    assert rebuilt.to_wire() == original.to_wire()


def test_chain_is_outermost_first() -> None:
    err = three_level_error()
    assert [e.code for e in err.chain()] == ["ZONE.IN_USE", "SYS.UNAVAILABLE", "DB.UNAVAILABLE"]
    assert err.chain()[0] is err
    middle = err.cause
    assert middle is not None
    assert err.chain()[1] is middle
    assert err.chain()[2] is middle.cause


def test_chain_of_a_single_error_is_itself() -> None:
    err = RingstackError("A.B", "m")
    assert err.chain() == [err]


@pytest.mark.parametrize(
    "garbage",
    [
        None,
        42,
        "SYS.INTERNAL",
        [],
        ["code"],
        {},
        {"message": "no code"},
        {"code": 5},
        {"code": None},
        {"code": ["A.B"]},
    ],
)
def test_from_wire_of_garbage_is_malformed(garbage: Any) -> None:
    err = RingstackError.from_wire(garbage)
    assert err.code == Sys.MALFORMED_MESSAGE
    assert "unreadable" in err.message
    assert err.cause is None


def test_from_wire_garbage_cause_becomes_a_malformed_cause() -> None:
    err = RingstackError.from_wire({"code": "A.B", "message": "m", "cause": "oops"})
    assert err.code == "A.B"
    assert err.cause is not None
    assert err.cause.code == Sys.MALFORMED_MESSAGE


def test_from_wire_tolerates_odd_message_and_details() -> None:
    err = RingstackError.from_wire({"code": "A.B", "message": 12, "details": ["not", "a", "mapping"]})
    assert err.code == "A.B"
    assert err.message == "12"
    assert err.details == {}
    assert RingstackError.from_wire({"code": "A.B"}).message == ""


def test_from_wire_truncates_the_garbage_it_quotes() -> None:
    err = RingstackError.from_wire("x" * 10_000)
    assert err.code == Sys.MALFORMED_MESSAGE
    assert len(err.message) < 300


def test_looping_cause_chain_is_bounded() -> None:
    wire: dict[str, Any] = {"code": "LOOP.A", "message": "a"}
    wire["cause"] = wire  # a cycle: possible from Python callers, not from JSON
    err = RingstackError.from_wire(wire)
    chain = err.chain()
    assert len(chain) == MAX_CAUSE_DEPTH + 1
    assert all(e.code == "LOOP.A" for e in chain)
    assert chain[-1].cause is None


def test_deeply_nested_cause_chain_is_bounded() -> None:
    wire: dict[str, Any] = {"code": "DEEP.0", "message": "bottom"}
    for level in range(1, 20_000):
        wire = {"code": f"DEEP.{level}", "message": "m", "cause": wire}
    err = RingstackError.from_wire(wire)
    chain = err.chain()
    assert len(chain) == MAX_CAUSE_DEPTH + 1
    assert chain[0].code == "DEEP.19999"
    assert chain[-1].code == f"DEEP.{19_999 - MAX_CAUSE_DEPTH}"
    # The bounded error is itself safe to send again.
    assert len(orjson.dumps(err.to_wire())) < 10_000


def test_chain_within_the_bound_is_kept_whole() -> None:
    wire: dict[str, Any] = {"code": "DEEP.0", "message": "bottom"}
    for level in range(1, MAX_CAUSE_DEPTH + 1):
        wire = {"code": f"DEEP.{level}", "message": "m", "cause": wire}
    chain = RingstackError.from_wire(wire).chain()
    assert [e.code for e in chain] == [f"DEEP.{level}" for level in range(MAX_CAUSE_DEPTH, -1, -1)]


def test_from_wire_of_deeply_nested_garbage_is_malformed_not_recursion_error() -> None:
    """Garbage nested as deep as JSON from the wire may be (orjson accepts 1024 levels) must not crash
    the error path: the quoted repr is bounded in length, so it must be bounded in depth too."""
    depth = 1000
    garbage = orjson.loads(b"[" * depth + b"]" * depth)
    err = RingstackError.from_wire(garbage)
    assert err.code == Sys.MALFORMED_MESSAGE


def test_helpers() -> None:
    err = invalid_argument("bad name", field="name")
    assert err.code == Sys.INVALID_ARGUMENT
    assert err.details == {"field": "name"}
    nf = not_found("zone", "u" * 32)
    assert nf.code == Sys.NOT_FOUND
    assert nf.details == {"kind": "zone", "uuid": "u" * 32}
    assert "u" * 32 in nf.message


def test_sys_codes_are_unique_and_namespaced() -> None:
    codes = [v for k, v in vars(Sys).items() if k.isupper()]
    assert len(codes) == len(set(codes))
    assert all(code == f"SYS.{name}" for name, code in vars(Sys).items() if name.isupper())


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=10,
)
CODES = st.text(min_size=1, max_size=20)


@st.composite
def error_chains(draw: st.DrawFn) -> RingstackError:
    err: RingstackError | None = None
    for _ in range(draw(st.integers(min_value=1, max_value=MAX_CAUSE_DEPTH + 1))):
        details = draw(st.dictionaries(st.text(max_size=6), JSON, max_size=2))
        err = RingstackError(draw(CODES), draw(st.text(max_size=20)), details=details, cause=err)
    assert err is not None
    return err


@settings(max_examples=200, deadline=None)
@given(error_chains())
def test_round_trip_property(err: RingstackError) -> None:
    rebuilt = RingstackError.from_wire(orjson.loads(orjson.dumps(err.to_wire())))
    assert rebuilt.to_wire() == err.to_wire()
    assert [e.code for e in rebuilt.chain()] == [e.code for e in err.chain()]


@settings(max_examples=200, deadline=None)
@given(JSON)
def test_from_wire_never_raises(wire: Any) -> None:
    err = RingstackError.from_wire(wire)
    assert isinstance(err.code, str)
    assert len(err.chain()) <= MAX_CAUSE_DEPTH + 1
