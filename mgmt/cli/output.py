"""Formatting replies for people and programs, one place for every command (cliff's formatters).

- ``table`` (default): a grid; a list reply is one row per result, a single resource is
  ``Field | Value`` rows; ``max_width`` wraps the widest columns to fit.
- ``json`` / ``yaml``: the whole reply, keys sorted (``-c`` keeps only those fields of each result).
- ``value``: values only, space-separated, one result per line (for shell scripts).
- ``csv``: a header line, then one line per result.

``columns`` (``-c``, repeatable) picks and orders the fields shown; one not in the reply is a
``ColumnError`` naming those that are.
"""

from __future__ import annotations

from typing import Any

import orjson

FORMATS = ("table", "json", "yaml", "value", "csv")


class ColumnError(ValueError):
    pass


def render(data: dict[str, Any], fmt: str, columns: tuple[str, ...] = (), max_width: int = 0) -> str:
    if columns:
        data = _select(data, columns)
    if fmt == "json":
        return orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode()
    if fmt == "yaml":
        import yaml

        return yaml.safe_dump(data, sort_keys=True, default_flow_style=False).rstrip()
    header, rows, listing = _rows(data)
    if listing and columns:
        header = list(columns)  # also the header of an empty listing
    if fmt == "value":
        if listing:
            return "\n".join(" ".join(_cell(v) for v in row) for row in rows)
        return "\n".join(_cell(row[1]) for row in rows)
    if fmt == "csv":
        return _csv(header, rows)
    return _table(data, max_width)


# ---------------------------------------------------------------------- shaping


def _results(data: dict[str, Any]) -> list[dict[str, Any]] | None:
    rows = data.get("inventories")
    return rows if isinstance(rows, list) else None


def _select(data: dict[str, Any], columns: tuple[str, ...]) -> dict[str, Any]:
    results = _results(data)
    if results is not None:
        known: list[str] = []
        for row in results:
            known.extend(k for k in row if k not in known)
        _check(columns, known, bool(results))
        return {**data, "inventories": [{c: row.get(c) for c in columns} for row in results]}
    inv = data.get("inventory")
    if isinstance(inv, dict):
        _check(columns, list(inv), True)
        return {**data, "inventory": {c: inv.get(c) for c in columns}}
    _check(columns, list(data), True)
    return {c: data.get(c) for c in columns}


def _check(columns: tuple[str, ...], known: list[str], have_rows: bool) -> None:
    unknown = [c for c in columns if c not in known]
    if unknown and have_rows:
        raise ColumnError(
            f"no column {', '.join(map(repr, unknown))} in this reply; its columns: {', '.join(known)}"
        )


def _rows(data: dict[str, Any]) -> tuple[list[str], list[list[Any]], bool]:
    """(header, rows, is a listing): a listing has one row per result, otherwise Field/Value rows."""
    results = _results(data)
    if results is not None:
        header: list[str] = []
        for row in results:
            header.extend(k for k in row if k not in header)
        return header, [[row.get(c) for c in header] for row in results], True
    inv = data.get("inventory")
    fields = inv if isinstance(inv, dict) else data
    return ["Field", "Value"], [[k, v] for k, v in fields.items()], False


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | dict):
        return orjson.dumps(value).decode()
    return str(value)


def _csv(header: list[str], rows: list[list[Any]]) -> str:
    import csv
    import io

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([_cell(v) for v in row] for row in rows)
    return out.getvalue().rstrip("\n")


# ---------------------------------------------------------------------- the table


def _fit(widths: list[int], max_width: int) -> list[int]:
    """Shrink the widest columns until the grid (3 characters per column plus 1) fits."""
    if max_width <= 0:
        return widths
    widths = list(widths)
    budget = max_width - (3 * len(widths) + 1)
    while sum(widths) > budget:
        widest = max(range(len(widths)), key=lambda i: widths[i])
        if widths[widest] <= 8:  # narrower than this is unreadable: let the terminal wrap
            break
        widths[widest] -= 1
    return widths


def _wrap(text: str, width: int) -> list[str]:
    lines: list[str] = []
    for part in text.split("\n") or [""]:
        lines.extend(part[i : i + width] for i in range(0, max(len(part), 1), width))
    return lines


def _grid(header: list[str], rows: list[list[str]], max_width: int) -> str:
    natural = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    widths = _fit(natural, max_width)
    line = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def fmt(cells: list[str]) -> list[str]:
        wrapped = [_wrap(c, w) for c, w in zip(cells, widths, strict=True)]
        height = max(len(w) for w in wrapped)
        return [
            "| "
            + " | ".join((w[i] if i < len(w) else "").ljust(n) for w, n in zip(wrapped, widths, strict=True))
            + " |"
            for i in range(height)
        ]

    out = [line, *fmt(header), line]
    for row in rows:
        out.extend(fmt(row))
    out.append(line)
    return "\n".join(out)


def _table(data: dict[str, Any], max_width: int) -> str:
    parts: list[str] = []
    results = _results(data)
    if results is not None:
        header, rows, _ = _rows(data)
        if rows:
            parts.append(_grid(header, [[_cell(v) for v in r] for r in rows], max_width))
    elif isinstance(data.get("inventory"), dict):
        inv = data["inventory"]
        parts.append(_grid(["Field", "Value"], [[k, _cell(v)] for k, v in inv.items()], max_width))
    rest = {k: v for k, v in data.items() if k not in ("inventories", "inventory") and v is not None}
    if rest:
        parts.append(_grid(["Field", "Value"], [[k, _cell(v)] for k, v in rest.items()], max_width))
    if results is not None and not results and not rest:
        parts.append("(no results)")
    return "\n".join(parts) if parts else "OK"
