"""Base classes for API messages, replies, inventories and events.

Conventions every message follows:
- field names are camelCase on the wire (``zoneUuid``, ``l3NetworkUuids``), ZStack's API names;
  Python code uses the snake_case attribute names pydantic derives them from;
- unknown fields are rejected in client API input (``ApiInput``: every ``ApiMessage`` and what it
  nests), and ignored everywhere else (replies, inventories, events, agent commands, replies and
  reports, job bodies read back from the database), so that adjacent releases coexist during a
  rolling upgrade: a newer sender's extra field is no error to an older reader;
- client API input is bounded before any model sees it (``check_input``): nesting depth, string
  lengths, NUL bytes, integers beyond 64 bits are ``SYS.INVALID_ARGUMENT`` naming the field, so
  nothing a client sends reaches PostgreSQL as something it refuses (``SYS.INTERNAL``);
- an API message's wire name is its class name (``CreateZone``); the CLI and the JSON Schema
  export use the same name.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, ClassVar, Final, Literal, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from bus.errors import RingstackError, Sys
from schema.registry import REGISTRY


class WireModel(BaseModel):
    model_config = ConfigDict(
        extra="ignore",
        alias_generator=to_camel,
        # Python code may build models by attribute name; bodies from the wire are validated with
        # ``from_wire`` (aliases only), so the wire speaks one style.
        validate_by_alias=True,
        validate_by_name=True,
        serialize_by_alias=True,
        str_strip_whitespace=False,
    )

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)

    @classmethod
    def from_wire(cls, body: Any) -> Self:
        """Validate a body received from the wire: camelCase names only."""
        return cls.model_validate(body, by_alias=True, by_name=False)


class ApiInput(WireModel):
    """What a client sends: unknown fields are rejected (a typo must not pass silently)."""

    model_config = ConfigDict(extra="forbid")

    @classmethod
    def from_wire(cls, body: Any) -> Self:
        check_input(body)
        return cls.model_validate(body, by_alias=True, by_name=False)

    @classmethod
    def from_stored(cls, body: Any) -> Self:
        """A body this or another release accepted earlier (a job's): fields unknown here are
        dropped, so a job a newer node stored can still be run by an older one."""
        if isinstance(body, dict):
            known = {f.alias or name for name, f in cls.model_fields.items()}
            body = {key: value for key, value in body.items() if key in known}
        return cls.model_validate(body, by_alias=True, by_name=False)


# ---------------------------------------------------------------- limits on client input

# What one request may cost: the broker message is bounded by ``AsyncBus.max_message_bytes``; inside
# it, these bound the work of validating and storing it. Fields set tighter bounds of their own.
MAX_INPUT_DEPTH: Final = 16
MAX_INPUT_STRING: Final = 65_536
MAX_INPUT_ITEMS: Final = 10_000  # entries of one list or object
_INT64: Final = (-(2**63), 2**63 - 1)


def check_input(body: Any) -> None:
    """Refuse client input no column, index or comparison can take, naming the field."""
    _check(body, (), 0)


def _check(value: Any, path: tuple[str | int, ...], depth: int) -> None:
    if isinstance(value, str):
        if len(value) > MAX_INPUT_STRING:
            _refuse(path, f"longer than {MAX_INPUT_STRING} characters", "string_too_long")
        if "\x00" in value:
            _refuse(path, "contains a NUL character", "string_nul")
    elif type(value) is int:
        if not _INT64[0] <= value <= _INT64[1]:
            _refuse(path, "does not fit a 64-bit integer", "int_out_of_range")
    elif isinstance(value, dict | list):
        if depth >= MAX_INPUT_DEPTH:
            _refuse(path, f"nested deeper than {MAX_INPUT_DEPTH} levels", "too_deep")
        if len(value) > MAX_INPUT_ITEMS:
            _refuse(path, f"has more than {MAX_INPUT_ITEMS} entries", "too_long")
        if isinstance(value, dict):
            for key, item in value.items():
                _check(key, (*path, str(key)[:64]), depth + 1)
                _check(item, (*path, key), depth + 1)
        else:
            for index, item in enumerate(value):
                _check(item, (*path, index), depth + 1)


def _refuse(path: tuple[str | int, ...], problem: str, kind: str) -> None:
    field = ".".join(str(p) for p in path) or "(body)"
    if len(field) > 200:
        field = field[:200] + "..."
    raise RingstackError(
        Sys.INVALID_ARGUMENT,
        f"{field}: {problem}",
        details={"errors": [{"field": field, "message": problem, "type": kind}]},
    )


W = TypeVar("W", bound=WireModel)


def parse_wire(model: type[W], body: Any, *, stored: bool = False) -> W:
    """Validate a body from the wire; a failure is ``SYS.INVALID_ARGUMENT`` naming every bad field.
    ``stored``: a client's body read back from the database (see ``ApiInput.from_stored``)."""
    try:
        if stored and issubclass(model, ApiInput):
            return model.from_stored(body)
        return model.from_wire(body)
    except ValidationError as exc:
        errors = [
            {
                "field": ".".join(str(p) for p in err["loc"]) or "(body)",
                "message": err["msg"],
                "type": err["type"],
            }
            for err in exc.errors(include_url=False, include_input=False)
        ]
        summary = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        raise RingstackError(
            Sys.INVALID_ARGUMENT, f"invalid {model.__name__}: {summary}", details={"errors": errors}
        ) from None


class Reply(WireModel):
    """The body of a successful reply."""


class EmptyReply(Reply):
    pass


class ApiMessage(ApiInput):
    """An API request. Subclasses register themselves under their class name.

    ``reply``: the reply body's model. ``resource_field``: the field naming the resource the
    request is about (routing and per-resource serialisation use it); None for creations and
    other requests not tied to one existing resource. ``mutating``: False for reads.
    """

    reply: ClassVar[type[Reply]] = EmptyReply
    resource_field: ClassVar[str | None] = None
    mutating: ClassVar[bool] = True
    service: ClassVar[str] = ""
    # Infrastructure (zones, clusters, hosts, storage, L2) is the admin's; the gateway refuses
    # these to normal accounts with SYS.PERMISSION_DENIED before any handler runs.
    admin_only: ClassVar[bool] = False
    # Reachable without a session (LogInByAccount and the like).
    public: ClassVar[bool] = False
    # Sent between management nodes only (routed calls); the API gateway refuses it from clients.
    internal: ClassVar[bool] = False

    def __init_subclass__(cls, *, abstract: bool = False, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not abstract:
            REGISTRY.register(cls)

    def target_uuid(self) -> str | None:
        """The uuid of the resource this request is about (routing and serialisation key)."""
        return getattr(self, self.resource_field) if self.resource_field else None


class Inventory(WireModel):
    """What the API shows of a resource; built from database rows by attribute name."""

    model_config = ConfigDict(from_attributes=True)

    uuid: str
    name: str
    description: str | None = None
    created_at: datetime
    updated_at: datetime


UUID_PATTERN = r"^[0-9a-f]{32}$"

# The field types every API shares.
Uuid = Annotated[str, Field(pattern=UUID_PATTERN)]
Name = Annotated[str, Field(min_length=1, max_length=255)]
Description = Annotated[str | None, Field(max_length=2048)]


class CreateMessage(ApiMessage, abstract=True):
    """A request that creates a resource.

    ``resourceUuid`` may be chosen by the caller (as ZStack allows); when it is not, the gateway
    assigns one before routing. Either way the request is routed to the node that will own the
    new resource, and the handler creates it under exactly that uuid, which is what makes a
    create that is re-run after its node died recognisable (see ``CallContext.resumed``).
    """

    resource_field: ClassVar[str | None] = "resource_uuid"

    resource_uuid: str | None = Field(default=None, pattern=UUID_PATTERN)


class ResourceMessage(ApiMessage, abstract=True):
    """A request about one existing resource, named by ``uuid``."""

    resource_field: ClassVar[str | None] = "uuid"

    uuid: str = Field(pattern=UUID_PATTERN, description="the resource's uuid")


DeletionMode = Literal["Permissive", "Enforcing"]


class DeleteMessage(ResourceMessage, abstract=True):
    """ZStack's deletion modes: Permissive refuses while the resource is in use, Enforcing cascades."""

    delete_mode: DeletionMode = "Permissive"


# ---------------------------------------------------------------- queries

QueryOp = Literal["=", "!=", ">", "<", ">=", "<=", "?=", "!?=", "~=", "!~=", "=null", "!=null"]
QUERY_OPS: tuple[str, ...] = ("!?=", "!~=", "!=null", "=null", "?=", "~=", "!=", ">=", "<=", "=", ">", "<")


# A value compared with a column: no column holds more than 2048 characters.
QueryValue = Annotated[str, Field(max_length=2048)] | int | float | bool


class Condition(ApiInput):
    """One filter of a query: ``name op value``; ``?=``/``!?=`` take a list, the null tests none."""

    name: str = Field(min_length=1, max_length=200)
    op: QueryOp
    value: QueryValue | Annotated[list[QueryValue], Field(max_length=1000)] | None = None


class QueryMessage(ApiMessage, abstract=True):
    """ZStack's query API: conditions ANDed together, paging, sorting, count, field selection."""

    mutating: ClassVar[bool] = False

    conditions: list[Condition] = Field(default_factory=list, max_length=64)
    limit: int = Field(default=1000, ge=0, le=10_000)
    start: int = Field(default=0, ge=0, le=2**63 - 1)
    sort_by: str | None = Field(default=None, max_length=200)
    sort_direction: Literal["asc", "desc"] = "asc"
    count: bool = False
    reply_with_count: bool = False
    fields: list[Annotated[str, Field(max_length=200)]] | None = Field(default=None, max_length=200)


class QueryReply(Reply):
    inventories: list[dict[str, Any]] = Field(default_factory=list)
    total: int | None = None


class Event(WireModel):
    """The body of a canonical event on the events exchange."""

    resource_uuid: str
    resource_type: str
    action: str
    inventory: dict[str, Any] | None = None
