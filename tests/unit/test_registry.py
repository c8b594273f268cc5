"""The API message registry: every message exports, names are unique, the wire is camelCase."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from pydantic import BaseModel
from pydantic.alias_generators import to_camel

from schema.api.base import ApiMessage, Reply
from schema.registry import REGISTRY, MessageRegistry, load_all


def message_module(name: str) -> str:
    cls = REGISTRY.get(name)
    return cls.__module__ if cls is not None else ""


load_all()
# Messages the real API declares (other test modules may register toy ones under their own names).
REAL = sorted(name for name in REGISTRY.names() if message_module(name).startswith("schema.api."))


def all_names() -> list[str]:
    """Every registered name, read when the test runs (so toy messages of other modules count too)."""
    return REGISTRY.names()


def message(name: str) -> type[ApiMessage]:
    cls = REGISTRY.get(name)
    assert cls is not None
    return cls


def models_in(cls: type[BaseModel], seen: set[type[BaseModel]] | None = None) -> Iterator[type[BaseModel]]:
    """The model and every model nested in its fields (conditions, inventories, ...)."""
    seen = set() if seen is None else seen
    if cls in seen:
        return
    seen.add(cls)
    yield cls
    for info in cls.model_fields.values():
        for nested in _model_types(info.annotation):
            yield from models_in(nested, seen)


def _model_types(annotation: Any) -> Iterator[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        yield from _model_types(arg)


def schema_property_names(schema: Any) -> Iterator[str]:
    """Every property name anywhere in a JSON schema (including $defs)."""
    if isinstance(schema, dict):
        props = schema.get("properties")
        if isinstance(props, dict):
            yield from props
        for value in schema.values():
            yield from schema_property_names(value)
    elif isinstance(schema, list):
        for value in schema:
            yield from schema_property_names(value)


def test_the_real_api_is_registered() -> None:
    assert {"CreateZone", "UpdateZone", "ChangeZoneState", "DeleteZone", "QueryZone"} <= set(REAL)


def test_abstract_bases_are_not_registered() -> None:
    for name in ("ApiMessage", "ResourceMessage", "DeleteMessage", "QueryMessage"):
        assert name not in REGISTRY


def test_names_are_unique_and_match_class_names() -> None:
    names = all_names()
    assert len(names) == len(set(names))
    assert sorted(names) == names
    for name in names:
        cls = message(name)
        assert cls.__name__ == name
        assert name in REGISTRY


def test_registering_a_second_class_under_a_taken_name_fails() -> None:
    registry = MessageRegistry()
    first = message("CreateZone")
    registry.register(first)
    registry.register(first)  # the same class again is harmless
    other = type("CreateZone", (), {})
    with pytest.raises(TypeError, match=r"CreateZone is taken by schema\.api\.zone\.CreateZone"):
        registry.register(other)
    assert registry.get("CreateZone") is first
    assert registry.names() == ["CreateZone"]


def test_declaring_an_api_message_with_a_taken_name_fails() -> None:
    before = REGISTRY.get("CreateZone")
    with pytest.raises(TypeError, match="CreateZone is taken"):

        class CreateZone(ApiMessage):  # the real CreateZone is in schema.api.zone
            name: str

    assert REGISTRY.get("CreateZone") is before


def test_json_schema_export_covers_every_message() -> None:
    exported = REGISTRY.json_schema()
    assert sorted(exported) == all_names()
    orjson.dumps(exported)  # it is plain JSON
    for name, entry in exported.items():
        cls = message(name)
        assert entry["service"] == cls.service
        assert entry["mutating"] is cls.mutating
        assert entry["resourceField"] == cls.resource_field
        assert entry["request"]["type"] == "object"
        assert entry["request"]["title"] == name
        assert entry["reply"]["type"] == "object"


@pytest.mark.parametrize("name", REAL)
def test_each_real_message_exports_its_schema(name: str) -> None:
    cls = message(name)
    request = cls.model_json_schema(by_alias=True)
    reply = cls.reply.model_json_schema(by_alias=True)
    assert request["additionalProperties"] is False  # unknown fields rejected, and the schema says so
    assert set(request.get("properties", {})) == {info.alias for info in cls.model_fields.values()}
    assert set(request.get("required", [])) <= set(request.get("properties", {}))
    assert isinstance(reply, dict)
    assert cls.service  # every real message names its service


def test_every_real_message_has_a_service_and_a_reply_model() -> None:
    for name in REAL:
        cls = message(name)
        assert issubclass(cls.reply, Reply)
        assert cls.service


def test_resource_field_names_a_real_field() -> None:
    for name in all_names():
        cls = message(name)
        if cls.resource_field is not None:
            assert cls.resource_field in cls.model_fields, name


def test_every_field_alias_is_camel_case() -> None:
    offenders: list[str] = []
    for name in all_names():
        cls = message(name)
        for model in models_in(cls):
            offenders.extend(
                f"{name}: {model.__name__}.{field}"
                for field, info in model.model_fields.items()
                if info.alias is None or "_" in info.alias or info.alias != to_camel(field)
            )
        for model in models_in(cls.reply):
            offenders.extend(
                f"{name} reply: {model.__name__}.{field}"
                for field, info in model.model_fields.items()
                if info.alias is None or "_" in info.alias
            )
    assert offenders == []


def test_every_exported_property_is_camel_case() -> None:
    offenders = [
        f"{name}: {prop}"
        for name, entry in REGISTRY.json_schema().items()
        for prop in [*schema_property_names(entry["request"]), *schema_property_names(entry["reply"])]
        if "_" in prop
    ]
    assert offenders == []


def test_every_api_message_forbids_extra_fields() -> None:
    for name in all_names():
        cls = message(name)
        assert cls.model_config.get("extra") == "forbid", name
        for model in models_in(cls):
            assert model.model_config.get("extra") == "forbid", f"{name}: {model.__name__}"


def test_every_api_message_rejects_an_unknown_field_in_practice() -> None:
    from pydantic import ValidationError

    for name in all_names():
        cls = message(name)
        with pytest.raises(ValidationError) as info:
            cls.from_wire({"definitelyNotAField": 1})
        assert any(err["type"] == "extra_forbidden" for err in info.value.errors()), name
