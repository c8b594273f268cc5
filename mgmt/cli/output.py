"""Formatting replies for people (table) and programs (json, yaml): one place for all commands."""

from __future__ import annotations

from typing import Any

import orjson
import yaml

FORMATS = ("table", "json", "yaml")


def render(data: dict[str, Any], fmt: str) -> str:
    if fmt == "json":
        return orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode()
    if fmt == "yaml":
        return yaml.safe_dump(data, sort_keys=True, default_flow_style=False).rstrip()
    return _table(data)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list | dict):
        return orjson.dumps(value).decode()
    return str(value)


def _grid(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    line = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def fmt(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    return "\n".join([line, fmt(header), line, *(fmt(r) for r in rows), line])


def _table(data: dict[str, Any]) -> str:
    parts: list[str] = []
    if "inventories" in data:
        rows = data["inventories"]
        columns: list[str] = []
        for row in rows:
            columns.extend(k for k in row if k not in columns)
        if rows:
            parts.append(_grid(columns, [[_cell(r.get(c)) for c in columns] for r in rows]))
    elif "inventory" in data and isinstance(data["inventory"], dict):
        inv = data["inventory"]
        parts.append(_grid(["Field", "Value"], [[k, _cell(v)] for k, v in inv.items()]))
    rest = {k: v for k, v in data.items() if k not in ("inventories", "inventory") and v is not None}
    if rest:
        parts.append(_grid(["Field", "Value"], [[k, _cell(v)] for k, v in rest.items()]))
    if "inventories" in data and not data["inventories"] and not rest:
        parts.append("(no results)")
    return "\n".join(parts) if parts else "OK"
