"""Dispatch an envelope to the service handler for its message name.

The dispatcher validates the body against the message's schema, runs the handler (``invoke``, the
only place a handler is called) in its resource's serial lane when the handler is ``serial``
(``in_lane``, the only place a lane is taken) and turns the reply model back into a wire body.
Work about a resource runs on its owner through ``mgmt.cluster.owner.OwnerPath``, which takes the
lease and the fence before the lane; ``dispatch`` is for work about no owned resource (reads, and
requests such as a log-in, answered by whichever node takes them).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from bus.envelope import Envelope
from bus.errors import RingstackError, Sys
from mgmt.core.serial import SerialQueues
from mgmt.core.service import SYSTEM_ACCOUNT, Account, CallContext, Service
from schema.api.base import ApiMessage, Reply, parse_wire

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Route:
    message: type[ApiMessage]
    service: Service
    fn: Callable[[ApiMessage, CallContext], Awaitable[Reply]]
    serial: bool
    cancellable: bool = False


class Dispatcher:
    def __init__(self, serial: SerialQueues) -> None:
        self.serial = serial
        self._routes: dict[str, Route] = {}

    def add_service(self, service: Service) -> None:
        """Add every handler of ``service``, or none of them if one clashes."""
        specs = service.handler_specs()
        for name in specs:
            if name in self._routes:
                other = type(self._routes[name].service).__name__
                raise TypeError(f"{name} is handled by both {other} and {type(service).__name__}")
        for name, (method, spec) in specs.items():
            self._routes[name] = Route(
                spec.message, service, getattr(service, method), spec.serial, spec.cancellable
            )

    def route(self, name: str) -> Route:
        route = self._routes.get(name)
        if route is None:
            raise RingstackError(Sys.UNKNOWN_MESSAGE, f"no service handles {name!r}", details={"name": name})
        return route

    def handles(self, name: str) -> bool:
        return name in self._routes

    def parse(self, env: Envelope) -> tuple[Route, ApiMessage]:
        route = self.route(env.name)
        return route, validate(route.message, env.body)

    async def dispatch(self, env: Envelope, account: Account = SYSTEM_ACCOUNT) -> dict[str, Any]:
        route, msg = self.parse(env)
        return await self.dispatch_parsed(route, msg, env, account)

    async def dispatch_parsed(
        self, route: Route, msg: ApiMessage, env: Envelope, account: Account = SYSTEM_ACCOUNT
    ) -> dict[str, Any]:
        ctx = CallContext(env, account)
        key = msg.target_uuid() if route.serial else None
        return await self.in_lane(key, lambda: self.invoke(route, msg, ctx), deadline=env.deadline)

    async def in_lane(
        self, key: str | None, work: Callable[[], Awaitable[T]], *, deadline: float | None = None
    ) -> T:
        """Run ``work`` in the serial lane of ``key`` (None: at once, in no lane)."""
        if key is None:
            return await work()
        return await self.serial.run(key, work, deadline=deadline)

    @staticmethod
    async def invoke(route: Route, msg: ApiMessage, ctx: CallContext) -> dict[str, Any]:
        """Call the handler; its reply as a wire body."""
        reply = await route.fn(msg, ctx)
        return reply.to_wire()


def validate(message: type[ApiMessage], body: dict[str, Any], *, stored: bool = False) -> ApiMessage:
    """Parse a body into its message model; a failure names every bad field. ``stored``: a job's
    body read back from the database, whose fields unknown to this release are dropped."""
    return parse_wire(message, body, stored=stored)
