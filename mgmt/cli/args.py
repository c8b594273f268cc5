"""Turning ``key=value`` words into an API body, zstack-cli style.

``ringstack CreateZone name=z1 description="first zone"``; list fields take commas
(``l3NetworkUuids=a,b``); a value starting with ``[`` or ``{`` is read as JSON. Query APIs read
conditions: ``QueryZone name~=z% state!=Disabled limit=10 sortBy=name``, with the operators
``= != > < >= <= ?= !?= ~= !~=`` and ``name=null`` / ``name!=null``.
"""

from __future__ import annotations

import typing
from typing import Any

import orjson
from pydantic.alias_generators import to_camel

from schema.api.base import QUERY_OPS, ApiMessage, QueryMessage


class UsageError(Exception):
    pass


# ``=null`` / ``!=null`` are spelled as the value ``null`` so that ``name=nullable`` stays a value.
_SPLIT_OPS = tuple(op for op in QUERY_OPS if not op.endswith("null"))
_QUERY_KEYS = {to_camel(n) for n in QueryMessage.model_fields if n != "conditions"}


def _is_list(message: type[ApiMessage], alias: str) -> bool:
    for name, info in message.model_fields.items():
        if (info.alias or name) == alias:
            return "list" in str(info.annotation) or typing.get_origin(info.annotation) is list
    return False


def _value(raw: str, as_list: bool) -> Any:
    if raw[:1] in ("[", "{"):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise UsageError(f"bad JSON value {raw!r}: {exc}") from None
    if as_list:
        return [item for item in raw.split(",") if item]
    return raw


def _split(word: str, ops: tuple[str, ...]) -> tuple[str, str, str]:
    """The leftmost operator wins; among operators starting at the same place, the longest."""
    best: tuple[int, str] | None = None
    for op in ops:
        pos = word.find(op)
        if pos >= 0 and (best is None or pos < best[0] or (pos == best[0] and len(op) > len(best[1]))):
            best = (pos, op)
    if best is None or best[0] == 0:
        raise UsageError(f"expected key=value, got {word!r}")
    pos, op = best
    return word[:pos], op, word[pos + len(op) :]


def parse_body(message: type[ApiMessage], words: list[str]) -> dict[str, Any]:
    if issubclass(message, QueryMessage):
        return _parse_query(message, words)
    body: dict[str, Any] = {}
    for word in words:
        key, _, raw = _split(word, ("=",))
        if key in body:
            raise UsageError(f"{key} given twice")
        body[key] = _value(raw, _is_list(message, key))
    return body


def _parse_query(message: type[ApiMessage], words: list[str]) -> dict[str, Any]:
    body: dict[str, Any] = {}
    conditions: list[dict[str, Any]] = []
    for word in words:
        key, op, raw = _split(word, _SPLIT_OPS)
        if key in _QUERY_KEYS and op == "=":
            body[key] = _value(raw, key == "fields")
            continue
        if op in ("=", "!=") and raw == "null":
            conditions.append({"name": key, "op": op + "null"})
        elif op in ("?=", "!?="):
            conditions.append({"name": key, "op": op, "value": _value(raw, as_list=True)})
        else:
            conditions.append({"name": key, "op": op, "value": raw})
    if conditions:
        body["conditions"] = conditions
    return body
