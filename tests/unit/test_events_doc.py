"""Every event kind and action the code publishes is documented (schema/events.py), and the
documentation is part of the exported JSON Schema."""

from __future__ import annotations

import re
from pathlib import Path

import orjson
from click.testing import CliRunner

from mgmt.cli.ctl import main as ctl
from schema.events import ACTIONS, KINDS

ROOT = Path(__file__).resolve().parents[2]
CALL = re.compile(r"resource_event\(\s*([A-Za-z_.\"]+),\s*[^,]+,\s*\"([a-z_]+)\"", re.S)
KIND_CONSTANT = re.compile(r"^(\w*KIND)(?::\s*Final)?\s*=\s*\"(\w+)\"", re.M)
ACTION_ARG = re.compile(r"(?:_reply|_publish|_sharing_events)\([^()]*\"([a-z_]+)\"\)")


def _sources() -> list[str]:
    return [p.read_text() for p in (ROOT / "mgmt").rglob("*.py")]


def test_every_published_kind_and_action_is_documented():
    # KIND constants: a file's own first (several files name theirs KIND), then any file's.
    shared: dict[str, str] = {}
    for text in _sources():
        shared.update(KIND_CONSTANT.findall(text))
    kinds, actions = set(), set()
    for text in _sources():
        constants = {**shared, **dict(KIND_CONSTANT.findall(text))}
        for kind, action in CALL.findall(text):
            actions.add(action)
            if kind.startswith('"'):
                kinds.add(kind.strip('"'))
            elif kind in constants:
                kinds.add(constants[kind])
        actions.update(ACTION_ARG.findall(text))
    assert {"zone", "vm", "host", "image"} <= kinds and {"created", "deleted", "destroyed"} <= actions
    assert kinds - set(KINDS) == set()
    assert actions - set(ACTIONS) == set()


def test_schema_export_has_the_events(tmp_path):
    out = tmp_path / "api.json"
    result = CliRunner().invoke(ctl, ["schema", "export", "-o", str(out)])
    assert result.exit_code == 0, result.output
    exported = orjson.loads(out.read_bytes())
    events = exported["events"]
    assert events["routingKey"] == "<kind>.<uuid>.<action>"
    assert set(events["body"]["properties"]) == {"resourceUuid", "resourceType", "action", "inventory"}
    assert "resourceUuid" in events["jobInventory"]["properties"]
    assert "CreateZone" in exported and "request" in exported["CreateZone"]
