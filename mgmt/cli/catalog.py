"""The CLI's view of the API: every API's name, fields, types, defaults and meanings.

Built from the pydantic message registry, then cached as JSON under ``$XDG_CACHE_HOME/ringstack``
so that a command starts without importing pydantic and every API module (about 0.45 s on a
2-core machine): a ``ringstack QueryZone`` only reads this file. The cache key covers the source
files of ``schema/`` and the plugin modules named by ``extra_services``, so an upgraded or edited
tree rebuilds it by itself; an unwritable cache directory only costs the rebuild.

Plugins' messages: the CLI imports the modules named in ``extra_services`` (the node's setting of
the same name, ``module:Class`` entries, from ``RINGSTACK_EXTRA_SERVICES`` or client.toml) so their
APIs are commands too.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path
from typing import Any

import orjson

FORMAT_VERSION = 1
SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schema"


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ringstack"


class ApiSpec:
    """One API as the CLI sees it: ``fields`` maps wire names to their description."""

    __slots__ = (
        "doc",
        "fields",
        "mutating",
        "name",
        "query",
        "query_keys",
        "query_ops",
        "resource_field",
        "service",
    )

    def __init__(self, name: str, raw: dict[str, Any], catalog: Catalog) -> None:
        self.name = name
        self.query_keys = catalog.query_keys
        self.query_ops = catalog.query_ops
        self.service: str = raw["service"]
        self.mutating: bool = raw["mutating"]
        self.query: bool = raw["query"]
        self.resource_field: str | None = raw["resourceField"]
        self.doc: str = raw["doc"]
        self.fields: dict[str, dict[str, Any]] = raw["fields"]

    def is_list(self, field: str) -> bool:
        return bool(self.fields.get(field, {}).get("list"))


class Catalog:
    def __init__(self, raw: dict[str, Any]) -> None:
        self._apis: dict[str, dict[str, Any]] = raw["apis"]
        self.query_keys: frozenset[str] = frozenset(raw["queryKeys"])
        self.query_ops: tuple[str, ...] = tuple(raw["queryOps"])

    def names(self) -> list[str]:
        return sorted(self._apis)

    def get(self, name: str) -> ApiSpec | None:
        raw = self._apis.get(name)
        return None if raw is None else ApiSpec(name, raw, self)

    def query_for(self, resource: str) -> str | None:
        """The Query API listing a resource kind spelled as in API names (``Zone``, ``L3Network``)."""
        name = f"Query{resource}"
        return name if name in self._apis else None


# ---------------------------------------------------------------------- building


def _plugin_modules(extra_services: str) -> list[str]:
    return [ref.split(":", 1)[0].strip() for ref in extra_services.split(",") if ref.strip()]


def _key(extra_services: str) -> str:
    # A plain string, compared whole (hashlib's import alone costs more than the comparison).
    own = os.stat(__file__)  # how the catalogue is built is part of what it holds
    parts = [str(FORMAT_VERSION), str(SCHEMA_DIR), extra_services, f"{own.st_mtime_ns}:{own.st_size}"]
    for folder in (SCHEMA_DIR, SCHEMA_DIR / "api"):
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            if entry.name.endswith(".py"):
                st = entry.stat()
                parts.append(f"{entry.name}:{st.st_mtime_ns}:{st.st_size}")
    if extra_services:
        import importlib.util

        for module in _plugin_modules(extra_services):
            try:
                spec = importlib.util.find_spec(module)
            except (ImportError, ValueError):
                spec = None
            if spec is not None and spec.origin and os.path.exists(spec.origin):
                st = os.stat(spec.origin)
                parts.append(f"{spec.origin}:{st.st_mtime_ns}:{st.st_size}")
    return "|".join(parts)


def _type_of(prop: dict[str, Any], defs: dict[str, Any]) -> tuple[str, bool]:
    """A short human spelling of a JSON Schema property, and whether it is a list."""
    if "$ref" in prop:
        target = defs.get(prop["$ref"].rsplit("/", 1)[-1], {})
        if "enum" in target:
            return " | ".join(str(v) for v in target["enum"]), False
        return f"object ({prop['$ref'].rsplit('/', 1)[-1]})", False
    if "anyOf" in prop:
        kinds = [_type_of(p, defs) for p in prop["anyOf"] if p.get("type") != "null"]
        return " | ".join(k for k, _ in kinds), any(is_list for _, is_list in kinds)
    if "enum" in prop:
        return " | ".join(str(v) for v in prop["enum"]), False
    if "const" in prop:
        return str(prop["const"]), False
    kind = prop.get("type", "any")
    if kind == "array":
        inner, _ = _type_of(prop.get("items", {}), defs)
        return f"list of {inner} (a,b,...)", True
    if kind == "string" and prop.get("pattern") == "^[0-9a-f]{32}$":
        return "uuid", False
    limits = [
        f"{word} {prop[key]}"
        for key, word in (
            ("minLength", "min length"),
            ("maxLength", "max length"),
            ("minimum", ">="),
            ("exclusiveMinimum", ">"),
            ("maximum", "<="),
            ("exclusiveMaximum", "<"),
        )
        if key in prop
    ]
    return f"{kind} ({', '.join(limits)})" if limits else str(kind), False


# Fields most APIs share, whose meaning is the same everywhere.
COMMON_MEANINGS = {
    "name": "a name for people (need not be unique)",
    "description": "free text for people",
    "deleteMode": "Permissive refuses while the resource is in use; Enforcing deletes what depends on it too",
    "conditions": "filters ANDed together: write them as name=value, name!=value, name~=a%, ...",
    "limit": "at most this many results",
    "start": "skip this many results (paging)",
    "sortBy": "the field to sort by",
    "sortDirection": "asc or desc",
    "count": "true: only the number of matches",
    "replyWithCount": "true: the results and the number of matches",
    "fields": "only these fields of each result (a,b,...)",
    "stateEvent": "the state change to make",
}


def _meaning(alias: str, described: str | None) -> str:
    if described:
        return " ".join(described.split())
    if alias in COMMON_MEANINGS:
        return COMMON_MEANINGS[alias]
    if alias == "uuid":
        return "the resource's uuid"
    if alias == "resourceUuid":
        return "the new resource's uuid (chosen by the caller; assigned when absent)"
    for suffix, word in (("Uuids", "uuids"), ("Uuid", "uuid")):
        if alias.endswith(suffix) and len(alias) > len(suffix):
            return f"the {alias[: -len(suffix)]}'s {word}"
    return ""


def _build(extra_services: str) -> dict[str, Any]:
    import importlib

    from schema.api.base import QUERY_OPS, QueryMessage
    from schema.registry import load_all

    plugins = _plugin_modules(extra_services)
    for module in plugins:
        importlib.import_module(module)  # registers the plugin's messages
    registry = load_all()
    # Only schema.api's and the plugins' own: whatever else this process imported is not served.
    sources = ("schema.api", *plugins)
    apis: dict[str, Any] = {}
    for name in registry.names():
        cls = registry.get(name)
        assert cls is not None
        if not any(cls.__module__ == s or cls.__module__.startswith(s + ".") for s in sources):
            continue
        schema = cls.model_json_schema(by_alias=True)
        defs = schema.get("$defs", {})
        required = set(schema.get("required", []))
        fields: dict[str, Any] = {}
        for attr, info in cls.model_fields.items():
            alias = info.alias or attr
            prop = schema.get("properties", {}).get(alias, {})
            kind, is_list = _type_of(prop, defs)
            entry: dict[str, Any] = {
                "type": kind,
                "required": alias in required,
                "meaning": _meaning(alias, info.description),
                "list": is_list,
            }
            if "default" in prop and prop["default"] is not None:
                entry["default"] = prop["default"]
            fields[alias] = entry
        apis[name] = {
            "service": cls.service,
            "mutating": cls.mutating,
            "query": issubclass(cls, QueryMessage),
            "resourceField": (cls.model_fields[cls.resource_field].alias or cls.resource_field)
            if cls.resource_field
            else None,
            "doc": " ".join((cls.__doc__ or "").split()),
            "fields": fields,
        }
    query_keys = [info.alias or n for n, info in QueryMessage.model_fields.items() if n != "conditions"]
    return {"apis": apis, "queryKeys": query_keys, "queryOps": list(QUERY_OPS)}


def load_catalog(extra_services: str = "") -> Catalog:
    # One file per source tree and plugin set (its "slot"), overwritten when the key changes, so
    # edits do not pile up files and several trees on one machine do not evict each other.
    slot = f"{zlib.crc32(f'{SCHEMA_DIR}|{extra_services}'.encode()):08x}"
    path = cache_dir() / f"cli-catalog-{slot}.json"
    key = _key(extra_services)
    try:
        raw = orjson.loads(path.read_bytes())
        if raw.get("key") == key:
            return Catalog(raw)
    except (OSError, orjson.JSONDecodeError, KeyError, AttributeError):
        pass
    raw = {"key": key, **_build(extra_services)}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_bytes(orjson.dumps(raw))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home: every run rebuilds, slower but correct
    return Catalog(raw)
