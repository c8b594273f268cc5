"""Client API input is bounded at the edge and strict; everything else on the wire is lenient."""

from __future__ import annotations

import typing
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

import schema.agent
import schema.agent_base
from bus.errors import RingstackError, Sys
from schema.api.base import (
    MAX_INPUT_DEPTH,
    MAX_INPUT_STRING,
    ApiInput,
    ApiMessage,
    Event,
    Inventory,
    Reply,
    WireModel,
    parse_wire,
)
from schema.registry import load_all

REGISTRY = load_all()


def _nested_models(model: type[BaseModel], seen: set[type[BaseModel]]) -> set[type[BaseModel]]:
    def args(tp: Any) -> list[Any]:
        return [tp, *(a for arg in typing.get_args(tp) for a in args(arg))]

    for field in model.model_fields.values():
        for tp in args(field.annotation):
            if isinstance(tp, type) and issubclass(tp, BaseModel) and tp not in seen:
                seen.add(tp)
                _nested_models(tp, seen)
    return seen


@pytest.mark.parametrize("name", sorted(REGISTRY._messages))
def test_every_api_message_and_what_it_nests_rejects_unknown_fields(name: str) -> None:
    message = REGISTRY.get(name)
    assert message is not None
    for model in {message, *_nested_models(message, set())}:
        assert issubclass(model, ApiInput), model
        assert model.model_config.get("extra") == "forbid", model


def _wire_models() -> list[type[WireModel]]:
    found: list[type[WireModel]] = []
    todo: list[type[WireModel]] = [WireModel]
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        found.append(cls)
    return found


def test_everything_but_client_input_ignores_unknown_fields() -> None:
    """Replies, inventories, events, agent commands, replies and reports: a field added by a newer
    release must not break an older reader during a rolling upgrade."""
    lenient = [m for m in _wire_models() if not issubclass(m, ApiInput)]
    assert {Reply, Inventory, Event, schema.agent_base.HostCommand, schema.agent.VmStateReport} <= set(lenient)
    for model in lenient:
        assert model.model_config.get("extra") == "ignore", model


def test_a_reply_with_a_field_from_a_newer_release_is_read() -> None:
    wire = {"hostUuid": "0" * 32, "agentVersion": "1", "uptime": 1.5, "addedLater": {"a": 1}}
    reply = parse_wire(schema.agent.PingReply, wire)
    assert "addedLater" not in reply.to_wire()
    assert reply.uptime == 1.5


def test_a_stored_job_body_with_a_field_from_a_newer_release_is_run() -> None:
    create_zone = REGISTRY.get("CreateZone")
    assert create_zone is not None
    body = {"name": "z", "addedLater": True}
    with pytest.raises(RingstackError) as err:
        parse_wire(create_zone, body)
    assert err.value.code == Sys.INVALID_ARGUMENT
    assert parse_wire(create_zone, body, stored=True).name == "z"  # type: ignore[attr-defined]


def _refused_field(model: type[ApiMessage], body: Any) -> str:
    with pytest.raises(RingstackError) as err:
        parse_wire(model, body)
    assert err.value.code == Sys.INVALID_ARGUMENT
    return str(err.value.details["errors"][0]["field"])


QUERY_ZONE = REGISTRY.get("QueryZone")
CREATE_ZONE = REGISTRY.get("CreateZone")
LOGIN = REGISTRY.get("LogInByAccount")


@pytest.mark.parametrize(
    ("model", "body", "field"),
    [
        (QUERY_ZONE, {"start": 2**63}, "start"),
        (QUERY_ZONE, {"limit": -(2**64)}, "limit"),
        (
            QUERY_ZONE,
            {"conditions": [{"name": "name", "op": "~=", "value": "%\u0000"}]},
            "conditions.0.value",
        ),
        (
            QUERY_ZONE,
            {"conditions": [{"name": "name", "op": "?=", "value": ["a", "\u0000"]}]},
            "conditions.0.value.1",
        ),
        (CREATE_ZONE, {"name": "a\u0000b"}, "name"),
        (LOGIN, {"accountName": "\u0000", "password": "p"}, "accountName"),
        (CREATE_ZONE, {"name": "z", "description": "d" * (MAX_INPUT_STRING + 1)}, "description"),
        (CREATE_ZONE, {"name": "z", "x\u0000": 1}, "x\u0000"),
    ],
)
def test_bad_input_is_refused_naming_the_field(model: Any, body: Any, field: str) -> None:
    assert _refused_field(model, body) == field


def test_nesting_is_bounded() -> None:
    deep: Any = 1
    for _ in range(MAX_INPUT_DEPTH + 2):
        deep = {"a": deep}
    assert _refused_field(CREATE_ZONE, {"name": "z", "x": deep}).startswith("x.a")  # type: ignore[arg-type]


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(REGISTRY.names()), st.dictionaries(st.text(max_size=12), JSON, max_size=6))
def test_any_body_for_any_api_is_accepted_or_invalid_argument(name: str, body: dict[str, Any]) -> None:
    message = REGISTRY.get(name)
    assert message is not None
    try:
        parse_wire(message, body)
    except RingstackError as exc:
        assert exc.code == Sys.INVALID_ARGUMENT
        assert exc.details["errors"][0]["field"]
