"""Requests an attacking account sends, generated from the API registry (``schema.registry``).

``tests/integration/test_tenant_attacker.py`` gives account B the uuids, names and IPs of account
A and, for every API B may call, sends requests that name one of A's resources (the "victim"
variant) and the same request naming a uuid that exists nowhere (the "absent" variant), every
other field filled with what B may legitimately use (its own resources, the shared catalogue).
What must hold is checked there; this module only knows how to build the requests:

* which fields of a message are uuids (their JSON schema has the uuid pattern), and which kind of
  resource each names, inferred from the field's or the message's name (``l3NetworkUuid`` ->
  ``l3_network``, ``DestroyVmInstance.uuid`` -> ``vm_instance``);
* a valid value for every other required field, from the message's JSON schema;
* for query APIs, which fields and relations the query accepts, learnt from the API itself (an
  unknown field is refused with the list of queryable ones), so a new relation is probed too.

A new API is covered without a change here, as long as its uuid fields are named after the kind
they hold (the convention every API follows); an unrecognised one is reported by the test.
"""

from __future__ import annotations

import re
import uuid as uuidlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from schema.api.base import UUID_PATTERN, ApiMessage, QueryMessage

# Kind (table name) -> its name inside field and message names, longest match wins.
KIND_NAMES: dict[str, tuple[str, ...]] = {
    "vm_instance": ("VmInstance", "Vm"),
    "vm_nic": ("VmNic",),
    "volume": ("Volume", "DataVolume", "RootVolume"),
    "image": ("Image",),
    "instance_offering": ("InstanceOffering",),
    "disk_offering": ("DiskOffering",),
    "l3_network": ("L3Network",),
    "l2_network": ("L2Network",),
    "ip_range": ("IpRange",),
    "security_group": ("SecurityGroup",),
    "security_group_rule": ("SecurityGroupRule", "Rule"),
    "vip": ("Vip",),
    "eip": ("Eip",),
    "access_key": ("AccessKey",),
    "account": ("Account", "Identity"),
    "job": ("Job",),
    "zone": ("Zone",),
    "cluster": ("Cluster",),
    "host": ("Host",),
    "primary_storage": ("PrimaryStorage",),
    "backup_storage": ("BackupStorage",),
}
ANY_KIND = "*"  # ShareResource's resourceUuids: a uuid of any kind


def kind_in(text: str) -> str | None:
    """The kind whose name is the longest one found in ``text`` (a CamelCase field or API name)."""
    best: tuple[int, str] | None = None
    for kind, names in KIND_NAMES.items():
        for name in names:
            if name in text and (best is None or len(name) > best[0]):
                best = (len(name), kind)
    return None if best is None else best[1]


def field_kind(message: type[ApiMessage], alias: str) -> str | None:
    if alias in ("resourceUuids",):
        return ANY_KIND
    if alias in ("uuid", "resourceUuid"):
        return kind_in(message.__name__)
    stem = alias[0].upper() + alias[1:]
    return kind_in(re.sub(r"Uuids?$", "", stem))


def _has_uuid_pattern(node: Any) -> bool:
    if isinstance(node, dict):
        if node.get("pattern") == UUID_PATTERN:
            return True
        return any(_has_uuid_pattern(v) for k, v in node.items() if k in ("anyOf", "items"))
    if isinstance(node, list):
        return any(_has_uuid_pattern(v) for v in node)
    return False


def _is_array(node: dict[str, Any]) -> bool:
    return node.get("type") == "array" or any(o.get("type") == "array" for o in node.get("anyOf", []))


@dataclass(frozen=True)
class UuidField:
    alias: str
    is_list: bool
    kind: str | None
    required: bool


def uuid_fields(message: type[ApiMessage]) -> list[UuidField]:
    schema = message.model_json_schema(by_alias=True)
    required = set(schema.get("required", []))
    return [
        UuidField(alias, _is_array(prop), field_kind(message, alias), alias in required)
        for alias, prop in schema.get("properties", {}).items()
        if _has_uuid_pattern(prop)
    ]


# Values that need no other field (a TCP rule would need ports), and a pattern-checked name.
_CHOICES = {"protocol": "ALL"}
# Addresses in TEST-NET-1, nobody's: a valid range of its own.
_NOBODYS = {
    "networkCidr": "192.0.2.0/28",
    "netmask": "255.255.255.0",
    "gateway": "192.0.2.1",
    "startIp": "192.0.2.10",
    "endIp": "192.0.2.20",
}


def _example(alias: str, node: dict[str, Any], defs: dict[str, Any]) -> Any:
    """A valid value for a non-uuid field, from its JSON schema."""
    if "$ref" in node:
        return _example(alias, defs[node["$ref"].rsplit("/", 1)[1]], defs)
    if "anyOf" in node:
        options = [o for o in node["anyOf"] if o.get("type") != "null"]
        return _example(alias, options[0], defs)
    if alias in _CHOICES:
        return _CHOICES[alias]
    if "enum" in node:
        return node["enum"][0]
    if "const" in node:
        return node["const"]
    kind = node.get("type")
    if kind == "object" and "patternProperties" in node:  # a map: one entry
        ((pattern, value),) = node["patternProperties"].items()
        key = "f" * 32 if pattern == UUID_PATTERN else "key"
        return {key: _example(alias, value, defs)}
    if kind == "object":
        required = set(node.get("required", []))
        props = node.get("properties", {})
        return {k: _example(k, v, defs) for k, v in props.items() if k in required}
    if kind == "array":
        return [_example(alias, node.get("items", {}), defs) for _ in range(max(1, node.get("minItems", 0)))]
    if "pattern" in node and node["pattern"].startswith("^[A-Za-z]"):
        return "DHCP"
    if kind == "integer":
        return max(1, int(node.get("minimum", 1)), int(node.get("exclusiveMinimum", 0)) + 1)
    if kind == "number":
        return max(1.0, float(node.get("minimum", 1)))
    if kind == "boolean":
        return False
    if alias in _NOBODYS:
        return _NOBODYS[alias]
    if node.get("format") == "ipv4":
        return "192.0.2.7"  # TEST-NET-1: nobody's
    return "attacker"


def body(message: type[ApiMessage], uuids: dict[str, Any]) -> dict[str, Any]:
    """Every required field, and every uuid field given in ``uuids`` (alias -> value)."""
    schema = message.model_json_schema(by_alias=True)
    defs = schema.get("$defs", {})
    required = set(schema.get("required", []))
    out: dict[str, Any] = {}
    for alias, prop in schema.get("properties", {}).items():
        if alias in uuids:
            out[alias] = uuids[alias]
        elif alias in required and not _has_uuid_pattern(prop):
            out[alias] = _example(alias, prop, defs)
    return out


def fresh_uuid() -> str:
    return uuidlib.uuid4().hex


# ---------------------------------------------------------------- queries

_QUERYABLE = re.compile(r"queryable fields: (.*)$")


def queryable(error_message: str) -> tuple[list[str], list[str]]:
    """(fields, relations) from the error a query answers for an unknown field."""
    found = _QUERYABLE.search(error_message)
    assert found, error_message
    names = [n.strip() for n in found.group(1).split(",")]
    return [n for n in names if not n.endswith(".*")], [n[:-2] for n in names if n.endswith(".*")]


def probe_values(
    field: str, victim: dict[str, list[str]], absent: dict[str, list[str]]
) -> Iterator[tuple[list[str], list[str]]]:
    """For a queryable field: (A's values, values of nobody) to compare with ``?=``."""
    lowered = field.lower()
    if lowered.endswith("uuid"):
        yield victim["uuid"], absent["uuid"]
    elif lowered == "name":
        yield victim["name"], absent["name"]
    elif lowered in ("ip", "gateway", "vipip", "guestip") or lowered.endswith("ip"):
        yield victim["ip"], absent["ip"]


def is_query(message: type[ApiMessage]) -> bool:
    return issubclass(message, QueryMessage)
