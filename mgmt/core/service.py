"""The service base: a service is a small class whose handler methods are its entry points.

    class ZoneService(Service):
        name = "zone"
        db: Database             # dependencies are declared as annotations ...
        events: EventPublisher   # ... and injected by whoever builds the service

        @handler(CreateZone)
        async def create_zone(self, msg: CreateZone, ctx: CallContext) -> ZoneReply: ...

A unit test builds ``ZoneService(db=..., events=...)`` and calls the method; no broker needed.
``serial=True`` runs the handler in the per-resource serial queue of the message's resource.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar, get_type_hints

from bus.envelope import Envelope, new_uuid
from schema.api.base import ApiMessage, Reply


@dataclass(frozen=True, slots=True)
class Account:
    """Who is calling. Identity (a later issue) fills it from the session."""

    uuid: str
    name: str
    is_admin: bool


SYSTEM_ACCOUNT = Account(uuid="0" * 32, name="system", is_admin=True)
ANONYMOUS = Account(uuid="", name="anonymous", is_admin=False)  # callers of public APIs (login)


@dataclass(slots=True)
class CallContext:
    """Per-request facts a handler may need besides the message itself."""

    envelope: Envelope
    account: Account = SYSTEM_ACCOUNT
    # True when this request is being run again by a new owner after the node that was running
    # it died: its effects may already be (partly) in place, so handlers must not fail on them.
    resumed: bool = False

    def new_resource_uuid(self, msg: ApiMessage) -> str:
        """The uuid a create request must use: the one the caller or gateway assigned, else a new one."""
        assigned = msg.target_uuid()
        return assigned if assigned is not None else new_uuid()

    @property
    def request_id(self) -> str:
        return self.envelope.id

    @property
    def deadline(self) -> float | None:
        return self.envelope.deadline

    def remaining(self) -> float | None:
        return None if self.envelope.deadline is None else self.envelope.deadline - time.time()


M = TypeVar("M", bound=ApiMessage)
HandlerFn = Callable[[Any, M, CallContext], Awaitable[Reply]]


@dataclass(frozen=True, slots=True)
class HandlerSpec:
    message: type[ApiMessage]
    serial: bool
    cancellable: bool = False


def handler(
    message: type[M], *, serial: bool = True, cancellable: bool = False
) -> Callable[[HandlerFn[M]], HandlerFn[M]]:
    """Mark a method as the handler of ``message``.

    ``serial`` (default True) queues it behind other operations on the same resource; it only
    applies to messages that name a resource (``resource_field``). ``cancellable``: the handler
    may be cancelled (``CancelJob``) while it runs, because cancellation at any await leaves
    nothing half-done (e.g. a flow chain, which rolls back).
    """

    def mark(fn: HandlerFn[M]) -> HandlerFn[M]:
        fn.__ringstack_handler__ = HandlerSpec(message, serial, cancellable)  # type: ignore[attr-defined]
        return fn

    return mark


class Service:
    name: ClassVar[str]
    dependencies: ClassVar[dict[str, Any]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        hints = get_type_hints(cls)
        cls.dependencies = {
            attr: hint
            for attr, hint in hints.items()
            if not attr.startswith("_")
            and getattr(hint, "__origin__", None) is not ClassVar
            and attr not in ("name", "dependencies")
        }

    def __init__(self, **deps: Any) -> None:
        missing = self.dependencies.keys() - deps.keys()
        unknown = deps.keys() - self.dependencies.keys()
        if missing or unknown:
            raise TypeError(
                f"{type(self).__name__} needs {sorted(self.dependencies)}; "
                f"missing {sorted(missing)}, unknown {sorted(unknown)}"
            )
        for attr, value in deps.items():
            setattr(self, attr, value)

    @classmethod
    def handler_specs(cls) -> dict[str, tuple[str, HandlerSpec]]:
        """Message name -> (method name, spec) for every handler this service declares."""
        specs: dict[str, tuple[str, HandlerSpec]] = {}
        for attr in dir(cls):
            spec = getattr(getattr(cls, attr, None), "__ringstack_handler__", None)
            if isinstance(spec, HandlerSpec):
                specs[spec.message.__name__] = (attr, spec)
        return specs

    async def start(self) -> None:
        """Called once the node is connected, before it takes requests."""

    async def stop(self) -> None:
        """Called after the node stopped taking requests and drained."""
