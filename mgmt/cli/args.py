"""Turning ``key=value`` words into an API body, zstack-cli style.

``ringstack CreateZone name=z1 description="first zone"``; list fields take commas
(``l3NetworkUuids=a,b``); a value starting with ``[`` or ``{`` is read as JSON. Query APIs read
conditions: ``QueryZone name~=z% state!=Disabled limit=10 sortBy=name``, with the operators
``= != > < >= <= ?= !?= ~= !~=`` and ``name=null`` / ``name!=null``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from mgmt.cli.catalog import ApiSpec


class UsageError(Exception):
    pass


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean: a, b?)`` with the closest names, or nothing when none is close."""
    import difflib

    pool = list(choices)
    close = difflib.get_close_matches(word, pool, n=3, cutoff=0.6)
    if not close:  # another case is a near miss too: createzone
        lowered = {c.lower(): c for c in pool}
        close = [lowered[c] for c in difflib.get_close_matches(word.lower(), list(lowered), n=3, cutoff=0.6)]
    if not close and word:  # a prefix: Create -> CreateCluster, CreateZone, ...
        close = sorted(c for c in pool if c.lower().startswith(word.lower()))[:3]
    return f" (did you mean: {', '.join(close)}?)" if close else ""


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


def parse_body(api: ApiSpec, words: list[str]) -> dict[str, Any]:
    if api.query:
        return _parse_query(api, words)
    body: dict[str, Any] = {}
    for word in words:
        key, _, raw = _split(word, ("=",))
        if key not in api.fields:
            raise UsageError(
                f"{api.name} has no field {key!r}{did_you_mean(key, api.fields)};"
                f" `ringstack {api.name} --help` lists them"
            )
        if key in body:
            raise UsageError(f"{key} given twice")
        body[key] = _value(raw, api.is_list(key))
    return body


def _parse_query(api: ApiSpec, words: list[str]) -> dict[str, Any]:
    # ``=null`` / ``!=null`` are spelled as the value ``null`` so that ``name=nullable`` stays a value.
    split_ops = tuple(op for op in api.query_ops if not op.endswith("null"))
    body: dict[str, Any] = {}
    conditions: list[dict[str, Any]] = []
    for word in words:
        key, op, raw = _split(word, split_ops)
        if key in api.query_keys and op == "=":
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
