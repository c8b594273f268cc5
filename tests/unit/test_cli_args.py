"""CLI words -> API bodies (zstack-cli style), and rendering replies for people and programs."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from mgmt.cli.args import UsageError, did_you_mean, parse_body
from mgmt.cli.catalog import load_catalog
from mgmt.cli.output import FORMATS, ColumnError, render
from schema.api.zone import CreateZone, QueryZone, UpdateZone

CATALOG = load_catalog()
SPECS = {name: CATALOG.get(name) for name in ("CreateZone", "QueryZone", "UpdateZone")}


def _spec(message: type) -> object:
    return SPECS[message.__name__]


# ---------------------------------------------------------------- plain messages


def test_create_zone_key_value() -> None:
    body = parse_body(_spec(CreateZone), ["name=z1", "description=first zone"])
    assert body == {"name": "z1", "description": "first zone"}
    assert CreateZone.from_wire(body).name == "z1"


def test_value_may_contain_equals_and_operators() -> None:
    assert parse_body(_spec(CreateZone), ["description=a=b!=c>d"]) == {"description": "a=b!=c>d"}


def test_empty_value() -> None:
    assert parse_body(_spec(CreateZone), ["description="]) == {"description": ""}


def test_no_words_is_an_empty_body() -> None:
    assert parse_body(_spec(CreateZone), []) == {}


def test_json_values() -> None:
    body = parse_body(_spec(CreateZone), ['name=["a", 1]', 'description={"k": [true, null]}'])
    assert body == {"name": ["a", 1], "description": {"k": [True, None]}}


def test_non_json_looking_values_stay_strings() -> None:
    assert parse_body(_spec(CreateZone), ["name=1", "description=null"]) == {
        "name": "1",
        "description": "null",
    }


@pytest.mark.parametrize("word", ["name=[1,", "name={oops}", "name=[", "name={"])
def test_bad_json_value_is_a_usage_error(word: str) -> None:
    with pytest.raises(UsageError, match="bad JSON"):
        parse_body(_spec(CreateZone), [word])


def test_duplicate_key_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="name given twice"):
        parse_body(_spec(CreateZone), ["name=a", "name=b"])


@pytest.mark.parametrize("word", ["name", "", "=z1", "name:z1", "name!z1"])
def test_word_without_key_value_is_a_usage_error(word: str) -> None:
    with pytest.raises(UsageError, match="expected key=value"):
        parse_body(_spec(CreateZone), [word])


def test_resource_message_takes_uuid_like_any_field() -> None:
    uuid = "0123456789abcdef0123456789abcdef"
    body = parse_body(_spec(UpdateZone), [f"uuid={uuid}", "name=z2"])
    assert body == {"uuid": uuid, "name": "z2"}
    assert UpdateZone.from_wire(body).target_uuid() == uuid


# ---------------------------------------------------------------- queries


@pytest.mark.parametrize(
    ("word", "condition"),
    [
        ("name=z1", {"name": "name", "op": "=", "value": "z1"}),
        ("state!=Disabled", {"name": "state", "op": "!=", "value": "Disabled"}),
        ("createDate>2024", {"name": "createDate", "op": ">", "value": "2024"}),
        ("createDate<2024", {"name": "createDate", "op": "<", "value": "2024"}),
        ("createDate>=2024", {"name": "createDate", "op": ">=", "value": "2024"}),
        ("createDate<=2024", {"name": "createDate", "op": "<=", "value": "2024"}),
        ("name?=a,b", {"name": "name", "op": "?=", "value": ["a", "b"]}),
        ("name!?=a,b,c", {"name": "name", "op": "!?=", "value": ["a", "b", "c"]}),
        ("name~=z%", {"name": "name", "op": "~=", "value": "z%"}),
        ("name!~=%test%", {"name": "name", "op": "!~=", "value": "%test%"}),
        ("description=null", {"name": "description", "op": "=null"}),
        ("description!=null", {"name": "description", "op": "!=null"}),
        ("name=nullable", {"name": "name", "op": "=", "value": "nullable"}),
        ("name!=nullable", {"name": "name", "op": "!=", "value": "nullable"}),
        ("name=NULL", {"name": "name", "op": "=", "value": "NULL"}),
        ("name~=null", {"name": "name", "op": "~=", "value": "null"}),
        ("name=", {"name": "name", "op": "=", "value": ""}),
        ("name=a=b", {"name": "name", "op": "=", "value": "a=b"}),
        ("name=a>b", {"name": "name", "op": "=", "value": "a>b"}),
        ("name?=single", {"name": "name", "op": "?=", "value": ["single"]}),
        ('name?=["a", 2]', {"name": "name", "op": "?=", "value": ["a", 2]}),
        ("name!?=[1,2]", {"name": "name", "op": "!?=", "value": [1, 2]}),
        ("zone.name=z1", {"name": "zone.name", "op": "=", "value": "z1"}),
    ],
)
def test_query_operators(word: str, condition: dict[str, Any]) -> None:
    body = parse_body(_spec(QueryZone), [word])
    assert body == {"conditions": [condition]}
    # And the result is a body the API accepts.
    msg = QueryZone.from_wire(body)
    assert msg.conditions[0].op == condition["op"]


def test_query_conditions_keep_their_order() -> None:
    body = parse_body(_spec(QueryZone), ["name~=z%", "state!=Disabled", "description=null"])
    assert [c["name"] for c in body["conditions"]] == ["name", "state", "description"]


def test_query_paging_keys_go_to_the_body() -> None:
    words = [
        "limit=10",
        "start=20",
        "sortBy=name",
        "sortDirection=desc",
        "count=true",
        "replyWithCount=true",
        "fields=uuid,name",
        "name=z1",
    ]
    body = parse_body(_spec(QueryZone), words)
    assert body == {
        "limit": "10",
        "start": "20",
        "sortBy": "name",
        "sortDirection": "desc",
        "count": "true",
        "replyWithCount": "true",
        "fields": ["uuid", "name"],
        "conditions": [{"name": "name", "op": "=", "value": "z1"}],
    }
    msg = QueryZone.from_wire(body)
    assert (msg.limit, msg.start, msg.sort_by, msg.sort_direction) == (10, 20, "name", "desc")
    assert msg.count is True
    assert msg.reply_with_count is True
    assert msg.fields == ["uuid", "name"]
    assert len(msg.conditions) == 1


def test_query_fields_as_json_list() -> None:
    assert parse_body(_spec(QueryZone), ['fields=["uuid"]']) == {"fields": ["uuid"]}


def test_query_paging_keys_with_other_operators_are_conditions() -> None:
    body = parse_body(_spec(QueryZone), ["limit>5"])
    assert body == {"conditions": [{"name": "limit", "op": ">", "value": "5"}]}


def test_query_snake_case_paging_key_is_a_condition_not_paging() -> None:
    body = parse_body(_spec(QueryZone), ["sort_by=name"])
    assert body == {"conditions": [{"name": "sort_by", "op": "=", "value": "name"}]}


def test_query_without_words_is_empty() -> None:
    assert parse_body(_spec(QueryZone), []) == {}


@pytest.mark.parametrize("word", ["name", "=z1", "", "name:z1"])
def test_query_word_without_operator_or_key_is_a_usage_error(word: str) -> None:
    with pytest.raises(UsageError, match="expected key=value"):
        parse_body(_spec(QueryZone), [word])


@pytest.mark.parametrize("word", ["!=x", "?=a", ">=5"])
def test_keyless_operator_word_is_a_usage_error(word: str) -> None:
    """The leftmost operator wins (args._split): in ``!=x`` that is ``!=`` at position 0, so the key
    is empty and the word is a usage error; it must not fall back to a later ``=`` and so query a
    field named ``!``."""
    with pytest.raises(UsageError):
        parse_body(_spec(QueryZone), [word])


def test_query_bad_json_list_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="bad JSON"):
        parse_body(_spec(QueryZone), ["name?=[a,b"])


# ---------------------------------------------------------------- never anything but UsageError

WORDS = st.lists(
    st.text(alphabet=st.sampled_from('ab=!?~<>[]{},"nul: 1'), max_size=12) | st.text(max_size=12), max_size=6
)


@settings(max_examples=200, deadline=None)
@given(WORDS)
def test_random_words_only_raise_usage_error(words: list[str]) -> None:
    for message in (CreateZone, QueryZone):
        try:
            body = parse_body(_spec(message), words)
        except UsageError:
            continue
        assert isinstance(body, dict)
        orjson.dumps(body)  # always something that can go on the wire


# ---------------------------------------------------------------- output

INVENTORY = {
    "uuid": "0123456789abcdef0123456789abcdef",
    "name": "z1",
    "description": None,
    "state": "Enabled",
    "createdAt": "2024-01-01T00:00:00Z",
    "tags": ["x", "y"],
}
OTHER = {"uuid": "fedcba9876543210fedcba9876543210", "name": "zone-two", "extra": 1}


def table_rows(text: str) -> list[list[str]]:
    return [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in text.splitlines()
        if line.startswith("|")
    ]


def test_render_inventory_table() -> None:
    text = render({"inventory": INVENTORY}, "table")
    rows = table_rows(text)
    assert rows[0] == ["Field", "Value"]
    assert rows[1:] == [
        ["uuid", INVENTORY["uuid"]],
        ["name", "z1"],
        ["description", ""],
        ["state", "Enabled"],
        ["createdAt", "2024-01-01T00:00:00Z"],
        ["tags", '["x","y"]'],
    ]
    lines = text.splitlines()
    assert len({len(line) for line in lines}) == 1  # a rectangular grid
    assert lines[0].startswith("+-")


def test_render_inventories_table() -> None:
    text = render({"inventories": [INVENTORY, OTHER], "total": 2}, "table")
    rows = table_rows(text)
    assert rows[0] == ["uuid", "name", "description", "state", "createdAt", "tags", "extra"]
    assert rows[1] == [INVENTORY["uuid"], "z1", "", "Enabled", "2024-01-01T00:00:00Z", '["x","y"]', ""]
    assert rows[2] == [OTHER["uuid"], "zone-two", "", "", "", "", "1"]
    assert ["Field", "Value"] in rows
    assert ["total", "2"] in rows


def test_render_empty_list_table() -> None:
    assert render({"inventories": []}, "table") == "(no results)"


def test_render_empty_reply_table() -> None:
    assert render({}, "table") == "OK"


@pytest.mark.parametrize(
    "data",
    [{"inventory": INVENTORY}, {"inventories": [INVENTORY, OTHER], "total": 2}, {"inventories": []}, {}],
)
def test_render_json_round_trips(data: dict[str, Any]) -> None:
    text = render(data, "json")
    assert orjson.loads(text) == data
    if data:
        assert "\n  " in text  # indented for people too


@pytest.mark.parametrize(
    "data",
    [{"inventory": INVENTORY}, {"inventories": [INVENTORY, OTHER], "total": 2}, {"inventories": []}, {}],
)
def test_render_yaml_round_trips(data: dict[str, Any]) -> None:
    text = render(data, "yaml")
    assert yaml.safe_load(text) == data
    assert not text.endswith("\n")


def test_render_json_sorts_keys() -> None:
    text = render({"inventory": INVENTORY}, "json")
    keys = [line.split('"')[1] for line in text.splitlines() if line.startswith('    "')]
    assert keys == sorted(INVENTORY)


def test_render_yaml_empty_list() -> None:
    assert render({"inventories": []}, "yaml") == "inventories: []"


def test_formats() -> None:
    assert FORMATS == ("table", "json", "yaml", "value", "csv")


def test_render_value_and_csv() -> None:
    data = {"inventories": [INVENTORY, OTHER], "total": 2}
    assert render(data, "value", ("uuid", "name")).splitlines() == [
        f"{INVENTORY['uuid']} z1",
        f"{OTHER['uuid']} zone-two",
    ]
    assert render({"inventory": INVENTORY}, "value", ("name", "state")).splitlines() == ["z1", "Enabled"]
    lines = render(data, "csv", ("name", "tags")).splitlines()
    assert lines == ["name,tags", 'z1,"[""x"",""y""]"', "zone-two,"]


def test_columns_pick_and_order_fields_in_every_format() -> None:
    data = {"inventories": [INVENTORY, OTHER], "total": 2}
    assert orjson.loads(render(data, "json", ("name",))) == {
        "inventories": [{"name": "z1"}, {"name": "zone-two"}],
        "total": 2,
    }
    assert yaml.safe_load(render({"inventory": INVENTORY}, "yaml", ("state",))) == {
        "inventory": {"state": "Enabled"}
    }
    assert table_rows(render(data, "table", ("name", "uuid")))[:2] == [
        ["name", "uuid"],
        ["z1", INVENTORY["uuid"]],
    ]


def test_unknown_column_names_the_known_ones() -> None:
    with pytest.raises(ColumnError, match=r"'nope'.*uuid, name"):
        render({"inventories": [INVENTORY]}, "json", ("nope",))
    # An empty listing has no columns to check against: nothing to complain about.
    assert render({"inventories": []}, "csv", ("nope",)) == "nope"


@pytest.mark.parametrize("width", [40, 60, 90])
def test_max_width_wraps_and_keeps_every_character(width: int) -> None:
    text = render({"inventory": {**INVENTORY, "description": "d" * 120}}, "table", max_width=width)
    assert max(len(line) for line in text.splitlines()) <= width
    values = "".join(row[1] for row in table_rows(text)[1:])
    assert "d" * 120 in values and INVENTORY["uuid"] in values


def test_did_you_mean() -> None:
    names = CATALOG.names()
    assert "CreateZone" in did_you_mean("CreateZon", names)
    assert "CreateZone" in did_you_mean("createzone", names)
    assert did_you_mean("Xyzzy", names) == ""


def test_unknown_field_is_a_usage_error_with_suggestions() -> None:
    with pytest.raises(UsageError, match=r"no field 'nmae' \(did you mean: name\?\)"):
        parse_body(_spec(CreateZone), ["nmae=x"])
