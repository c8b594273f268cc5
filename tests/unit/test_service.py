"""Services and the dispatcher, with toy messages and a toy service (no broker, no database)."""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import pytest

from bus.envelope import Envelope, new_uuid
from bus.errors import RingstackError, Sys
from mgmt.core.dispatcher import Dispatcher, validate
from mgmt.core.serial import SerialQueues
from mgmt.core.service import SYSTEM_ACCOUNT, Account, CallContext, HandlerSpec, Service, handler
from schema.api.base import ApiMessage, CreateMessage, Reply, ResourceMessage
from schema.registry import REGISTRY

SAFETY = 5.0

# ---------------------------------------------------------------- toy messages (unique names: they register)


class UnitTestPong(Reply):
    echoed: str
    repeat_count: int
    request_id: str
    account_name: str


class UnitTestPing(ApiMessage):
    service: ClassVar[str] = "unittest"
    reply = UnitTestPong

    text: str
    repeat_count: int = 1


class UnitTestTouchReply(Reply):
    resource_uuid: str
    note_text: str


class UnitTestTouch(ResourceMessage):
    """Serial (the default): queued behind other operations on the same uuid."""

    service: ClassVar[str] = "unittest"
    reply = UnitTestTouchReply

    note_text: str


class UnitTestPeek(ResourceMessage):
    """Not serial: may run alongside anything on the same uuid."""

    service: ClassVar[str] = "unittest"
    reply = UnitTestTouchReply
    mutating: ClassVar[bool] = False

    note_text: str


class UnitTestMake(CreateMessage):
    """A create: serialised on the uuid the new resource will have, when one is assigned."""

    service: ClassVar[str] = "unittest"
    reply = UnitTestTouchReply

    note_text: str


# ---------------------------------------------------------------- toy dependencies and services


class FakeStore:
    def __init__(self) -> None:
        self.events: list[str] = []
        self.started: dict[str, asyncio.Event] = {}
        self.release: dict[str, asyncio.Event] = {}

    def gate(self, label: str) -> tuple[asyncio.Event, asyncio.Event]:
        started = self.started.setdefault(label, asyncio.Event())
        release = self.release.setdefault(label, asyncio.Event())
        return started, release


class FakeClock:
    def now(self) -> float:
        return 42.0


class UnitTestService(Service):
    name = "unittest"
    limit: ClassVar[int] = 3  # a ClassVar is configuration, not a dependency

    store: FakeStore
    clock: FakeClock
    _scratch: int  # private: not a dependency

    @handler(UnitTestPing)
    async def ping(self, msg: UnitTestPing, ctx: CallContext) -> UnitTestPong:
        self.store.events.append(f"ping {msg.text}")
        return UnitTestPong(
            echoed=msg.text * msg.repeat_count,
            repeat_count=msg.repeat_count,
            request_id=ctx.request_id,
            account_name=ctx.account.name,
        )

    @handler(UnitTestTouch)
    async def touch(self, msg: UnitTestTouch, ctx: CallContext) -> UnitTestTouchReply:
        return await self._gated(msg.uuid, msg.note_text)

    @handler(UnitTestMake)
    async def make(self, msg: UnitTestMake, ctx: CallContext) -> UnitTestTouchReply:
        return await self._gated(ctx.new_resource_uuid(msg), msg.note_text)

    @handler(UnitTestPeek, serial=False)
    async def peek(self, msg: UnitTestPeek, ctx: CallContext) -> UnitTestTouchReply:
        return await self._gated(msg.uuid, msg.note_text)

    async def _gated(self, uuid: str, label: str) -> UnitTestTouchReply:
        started, release = self.store.gate(label)
        self.store.events.append(f"start {label}")
        started.set()
        await release.wait()
        self.store.events.append(f"end {label}")
        return UnitTestTouchReply(resource_uuid=uuid, note_text=label)

    def helper(self) -> int:  # not a handler
        return 1


class UnitTestExtendedService(UnitTestService):
    name = "unittest-extended"
    extra: dict[str, Any]


class UnitTestRivalService(Service):
    name = "rival"

    @handler(UnitTestPing)
    async def also_ping(self, msg: UnitTestPing, ctx: CallContext) -> UnitTestPong:
        raise AssertionError("never called")


def make_service() -> UnitTestService:
    return UnitTestService(store=FakeStore(), clock=FakeClock())


def make_dispatcher(service: Service | None = None) -> tuple[Dispatcher, UnitTestService, SerialQueues]:
    svc = service if isinstance(service, UnitTestService) else make_service()
    queues = SerialQueues()
    dispatcher = Dispatcher(queues)
    dispatcher.add_service(svc)
    return dispatcher, svc, queues


def api(name: str, body: dict[str, Any], **kw: Any) -> Envelope:
    return Envelope(name=name, kind="api", body=body, **kw)


def invalid(err: RingstackError) -> dict[str, dict[str, str]]:
    assert err.code == Sys.INVALID_ARGUMENT
    return {e["field"]: e for e in err.details["errors"]}


# ---------------------------------------------------------------- Service


def test_dependencies_come_from_annotations() -> None:
    assert UnitTestService.dependencies == {"store": FakeStore, "clock": FakeClock}
    assert UnitTestExtendedService.dependencies == {
        "store": FakeStore,
        "clock": FakeClock,
        "extra": dict[str, Any],
    }
    assert UnitTestRivalService.dependencies == {}


def test_constructor_injects_dependencies() -> None:
    store, clock = FakeStore(), FakeClock()
    svc = UnitTestService(store=store, clock=clock)
    assert svc.store is store
    assert svc.clock is clock


def test_constructor_with_missing_dependency_raises() -> None:
    with pytest.raises(TypeError, match=r"missing \['clock'\]"):
        UnitTestService(store=FakeStore())
    with pytest.raises(TypeError, match=r"missing \['clock', 'store'\]"):
        UnitTestService()


def test_constructor_with_unknown_dependency_raises() -> None:
    with pytest.raises(TypeError, match=r"unknown \['db'\]"):
        UnitTestService(store=FakeStore(), clock=FakeClock(), db=object())
    with pytest.raises(TypeError, match=r"unknown \['limit'\]"):
        UnitTestService(store=FakeStore(), clock=FakeClock(), limit=5)
    with pytest.raises(TypeError, match=r"unknown \['store'\]"):
        UnitTestRivalService(store=FakeStore())


def test_handler_specs_find_every_handler() -> None:
    specs = UnitTestService.handler_specs()
    assert specs == {
        "UnitTestPing": ("ping", HandlerSpec(UnitTestPing, True)),
        "UnitTestTouch": ("touch", HandlerSpec(UnitTestTouch, True)),
        "UnitTestPeek": ("peek", HandlerSpec(UnitTestPeek, False)),
        "UnitTestMake": ("make", HandlerSpec(UnitTestMake, True)),
    }
    # Subclasses inherit their parents' handlers.
    assert UnitTestExtendedService.handler_specs() == specs
    assert UnitTestRivalService.handler_specs() == {
        "UnitTestPing": ("also_ping", HandlerSpec(UnitTestPing, True))
    }


def test_toy_messages_registered_under_their_class_names() -> None:
    for cls in (UnitTestPing, UnitTestTouch, UnitTestPeek, UnitTestMake):
        assert REGISTRY.get(cls.__name__) is cls


async def test_handler_is_callable_directly_without_a_broker() -> None:
    svc = make_service()
    env = api("UnitTestPing", {})
    reply = await svc.ping(UnitTestPing(text="ab", repeat_count=2), CallContext(env))
    assert isinstance(reply, UnitTestPong)
    assert reply.echoed == "abab"
    assert reply.request_id == env.id
    assert reply.account_name == SYSTEM_ACCOUNT.name
    assert svc.store.events == ["ping ab"]


def test_call_context_properties() -> None:
    env = api("UnitTestPing", {}, deadline=1234.5)
    ctx = CallContext(env)
    assert ctx.request_id == env.id
    assert ctx.deadline == 1234.5
    assert ctx.account is SYSTEM_ACCOUNT
    remaining = ctx.remaining()
    assert remaining is not None
    assert remaining < 0
    assert CallContext(api("UnitTestPing", {})).remaining() is None
    assert ctx.resumed is False


def test_new_resource_uuid_uses_the_assigned_one_or_makes_one() -> None:
    ctx = CallContext(api("UnitTestMake", {}))
    assigned = new_uuid()
    assert ctx.new_resource_uuid(UnitTestMake(note_text="n", resource_uuid=assigned)) == assigned
    fresh = {ctx.new_resource_uuid(UnitTestMake(note_text="n")) for _ in range(3)}
    assert len(fresh) == 3
    assert all(len(u) == 32 and set(u) <= set("0123456789abcdef") for u in fresh)
    # Requests that are not creations have no assigned uuid to reuse, except their target's.
    assert len(ctx.new_resource_uuid(UnitTestPing(text="x"))) == 32


# ---------------------------------------------------------------- Dispatcher: routing


async def test_dispatch_validates_calls_and_returns_a_camel_case_body() -> None:
    dispatcher, svc, _ = make_dispatcher()
    alice = Account(uuid=new_uuid(), name="alice", is_admin=False)
    env = api("UnitTestPing", {"text": "hi", "repeatCount": 3})
    body = await dispatcher.dispatch(env, alice)
    assert body == {"echoed": "hihihi", "repeatCount": 3, "requestId": env.id, "accountName": "alice"}
    assert svc.store.events == ["ping hi"]


def test_routes() -> None:
    dispatcher, svc, _ = make_dispatcher()
    assert dispatcher.handles("UnitTestPing")
    assert not dispatcher.handles("CreateZone")
    route = dispatcher.route("UnitTestTouch")
    assert route.message is UnitTestTouch
    assert route.service is svc
    assert route.serial is True
    assert dispatcher.route("UnitTestPeek").serial is False


async def test_unknown_message_name() -> None:
    dispatcher, svc, _ = make_dispatcher()
    with pytest.raises(RingstackError) as info:
        await dispatcher.dispatch(api("UnitTestNoSuchThing", {"text": "x"}))
    assert info.value.code == Sys.UNKNOWN_MESSAGE
    assert info.value.details == {"name": "UnitTestNoSuchThing"}
    assert svc.store.events == []


def test_two_services_handling_the_same_message_is_a_type_error() -> None:
    dispatcher, svc, _ = make_dispatcher()
    with pytest.raises(
        TypeError, match="UnitTestPing is handled by both UnitTestService and UnitTestRivalService"
    ):
        dispatcher.add_service(UnitTestRivalService())
    assert dispatcher.route("UnitTestPing").service is svc  # the first registration stands
    # Adding the same service class twice is a clash too.
    with pytest.raises(TypeError, match="is handled by both UnitTestService and UnitTestService"):
        dispatcher.add_service(make_service())


# ---------------------------------------------------------------- Dispatcher: validation


async def test_unknown_field_is_invalid_argument() -> None:
    dispatcher, svc, _ = make_dispatcher()
    with pytest.raises(RingstackError) as info:
        await dispatcher.dispatch(api("UnitTestPing", {"text": "x", "bogus": 1}))
    errors = invalid(info.value)
    assert set(errors) == {"bogus"}
    assert errors["bogus"]["type"] == "extra_forbidden"
    assert "UnitTestPing" in info.value.message
    assert "bogus" in info.value.message
    assert svc.store.events == []


async def test_snake_case_field_names_are_rejected() -> None:
    dispatcher, svc, _ = make_dispatcher()
    with pytest.raises(RingstackError) as info:
        await dispatcher.dispatch(api("UnitTestPing", {"text": "x", "repeat_count": 2}))
    errors = invalid(info.value)
    assert set(errors) == {"repeat_count"}
    assert errors["repeat_count"]["type"] == "extra_forbidden"

    with pytest.raises(RingstackError) as info:
        await dispatcher.dispatch(api("UnitTestTouch", {"uuid": new_uuid(), "note_text": "x"}))
    errors = invalid(info.value)
    assert set(errors) == {"note_text", "noteText"}
    assert errors["note_text"]["type"] == "extra_forbidden"
    assert errors["noteText"]["type"] == "missing"
    assert svc.store.events == []


async def test_wrong_types_name_every_field() -> None:
    dispatcher, svc, _ = make_dispatcher()
    with pytest.raises(RingstackError) as info:
        await dispatcher.dispatch(api("UnitTestPing", {"text": 5, "repeatCount": "many"}))
    errors = invalid(info.value)
    assert set(errors) == {"text", "repeatCount"}
    assert errors["text"]["type"] == "string_type"
    assert errors["repeatCount"]["type"] == "int_parsing"
    for e in errors.values():
        assert e["message"]
        assert set(e) == {"field", "message", "type"}  # no input echoed back, no URLs
    assert svc.store.events == []


async def test_missing_field_and_bad_uuid() -> None:
    dispatcher, _, _ = make_dispatcher()
    with pytest.raises(RingstackError) as info:
        await dispatcher.dispatch(api("UnitTestTouch", {"uuid": "NOT-A-UUID"}))
    errors = invalid(info.value)
    assert set(errors) == {"uuid", "noteText"}
    assert errors["uuid"]["type"] == "string_pattern_mismatch"
    assert errors["noteText"]["type"] == "missing"


def test_validate_returns_the_model() -> None:
    msg = validate(UnitTestPing, {"text": "x", "repeatCount": 4})
    assert isinstance(msg, UnitTestPing)
    assert msg.repeat_count == 4
    assert msg.target_uuid() is None
    uuid = new_uuid()
    touch = validate(UnitTestTouch, {"uuid": uuid, "noteText": "n"})
    assert touch.target_uuid() == uuid
    make = validate(UnitTestMake, {"resourceUuid": uuid, "noteText": "n"})
    assert make.target_uuid() == uuid
    assert validate(UnitTestMake, {"noteText": "n"}).target_uuid() is None


async def test_create_with_a_bad_resource_uuid_is_invalid() -> None:
    dispatcher, svc, _ = make_dispatcher()
    with pytest.raises(RingstackError) as info:
        await dispatcher.dispatch(api("UnitTestMake", {"resourceUuid": "XYZ", "noteText": "n"}))
    assert set(invalid(info.value)) == {"resourceUuid"}
    assert svc.store.events == []


# ---------------------------------------------------------------- Dispatcher: serial handlers


async def settle(rounds: int = 10) -> None:
    for _ in range(rounds):
        await asyncio.sleep(0)


async def test_serial_handler_calls_on_one_resource_do_not_overlap() -> None:
    dispatcher, svc, queues = make_dispatcher()
    uuid = new_uuid()
    first = asyncio.create_task(dispatcher.dispatch(api("UnitTestTouch", {"uuid": uuid, "noteText": "one"})))
    second = asyncio.create_task(dispatcher.dispatch(api("UnitTestTouch", {"uuid": uuid, "noteText": "two"})))
    one_started, one_release = svc.store.gate("one")
    two_started, two_release = svc.store.gate("two")
    await asyncio.wait_for(one_started.wait(), SAFETY)
    await settle()
    assert not two_started.is_set()  # queued behind "one"
    assert queues.depths() == {uuid: 2}
    two_release.set()  # even if allowed to finish, "two" must wait for "one"
    await settle()
    assert not two_started.is_set()
    one_release.set()
    assert await asyncio.wait_for(first, SAFETY) == {"resourceUuid": uuid, "noteText": "one"}
    assert await asyncio.wait_for(second, SAFETY) == {"resourceUuid": uuid, "noteText": "two"}
    assert svc.store.events == ["start one", "end one", "start two", "end two"]
    assert queues.depths() == {}


async def test_serial_handler_calls_on_different_resources_overlap() -> None:
    dispatcher, svc, queues = make_dispatcher()
    a, b = new_uuid(), new_uuid()
    first = asyncio.create_task(dispatcher.dispatch(api("UnitTestTouch", {"uuid": a, "noteText": "a"})))
    second = asyncio.create_task(dispatcher.dispatch(api("UnitTestTouch", {"uuid": b, "noteText": "b"})))
    a_started, a_release = svc.store.gate("a")
    b_started, b_release = svc.store.gate("b")
    await asyncio.wait_for(asyncio.gather(a_started.wait(), b_started.wait()), SAFETY)
    assert queues.depths() == {a: 1, b: 1}
    a_release.set()
    b_release.set()
    await asyncio.wait_for(asyncio.gather(first, second), SAFETY)


async def test_non_serial_handler_calls_on_one_resource_overlap() -> None:
    dispatcher, svc, queues = make_dispatcher()
    uuid = new_uuid()
    first = asyncio.create_task(dispatcher.dispatch(api("UnitTestPeek", {"uuid": uuid, "noteText": "p1"})))
    second = asyncio.create_task(dispatcher.dispatch(api("UnitTestPeek", {"uuid": uuid, "noteText": "p2"})))
    p1_started, p1_release = svc.store.gate("p1")
    p2_started, p2_release = svc.store.gate("p2")
    await asyncio.wait_for(asyncio.gather(p1_started.wait(), p2_started.wait()), SAFETY)
    assert queues.depths() == {}  # never went through the serial queue
    p1_release.set()
    p2_release.set()
    await asyncio.wait_for(asyncio.gather(first, second), SAFETY)


async def test_serial_handler_passes_the_envelope_deadline_to_the_queue() -> None:
    dispatcher, svc, _ = make_dispatcher()
    uuid = new_uuid()
    holder = asyncio.create_task(
        dispatcher.dispatch(api("UnitTestTouch", {"uuid": uuid, "noteText": "hold"}))
    )
    started, release = svc.store.gate("hold")
    await asyncio.wait_for(started.wait(), SAFETY)
    late = api("UnitTestTouch", {"uuid": uuid, "noteText": "late"}, deadline=0.0)  # long past
    with pytest.raises(RingstackError) as info:
        await asyncio.wait_for(dispatcher.dispatch(late), SAFETY)
    assert info.value.code == Sys.TIMEOUT
    release.set()
    await asyncio.wait_for(holder, SAFETY)
    assert "start late" not in svc.store.events


async def test_busy_lane_surfaces_through_dispatch() -> None:
    svc = make_service()
    queues = SerialQueues(limit_per_key=1)
    dispatcher = Dispatcher(queues)
    dispatcher.add_service(svc)
    uuid = new_uuid()
    holder = asyncio.create_task(dispatcher.dispatch(api("UnitTestTouch", {"uuid": uuid, "noteText": "h"})))
    started, release = svc.store.gate("h")
    await asyncio.wait_for(started.wait(), SAFETY)
    with pytest.raises(RingstackError) as info:
        await dispatcher.dispatch(api("UnitTestTouch", {"uuid": uuid, "noteText": "x"}))
    assert info.value.code == Sys.BUSY
    release.set()
    await asyncio.wait_for(holder, SAFETY)


async def test_creates_with_the_same_assigned_uuid_are_serialised_on_it() -> None:
    dispatcher, svc, queues = make_dispatcher()
    uuid = new_uuid()
    first = asyncio.create_task(
        dispatcher.dispatch(api("UnitTestMake", {"resourceUuid": uuid, "noteText": "m1"}))
    )
    second = asyncio.create_task(
        dispatcher.dispatch(api("UnitTestMake", {"resourceUuid": uuid, "noteText": "m2"}))
    )
    m1_started, m1_release = svc.store.gate("m1")
    m2_started, m2_release = svc.store.gate("m2")
    await asyncio.wait_for(m1_started.wait(), SAFETY)
    await settle()
    assert not m2_started.is_set()
    assert queues.depths() == {uuid: 2}
    m1_release.set()
    m2_release.set()
    assert await asyncio.wait_for(first, SAFETY) == {"resourceUuid": uuid, "noteText": "m1"}
    assert await asyncio.wait_for(second, SAFETY) == {"resourceUuid": uuid, "noteText": "m2"}
    assert svc.store.events == ["start m1", "end m1", "start m2", "end m2"]


async def test_create_without_an_assigned_uuid_is_not_queued() -> None:
    dispatcher, svc, queues = make_dispatcher()
    task = asyncio.create_task(dispatcher.dispatch(api("UnitTestMake", {"noteText": "free"})))
    started, release = svc.store.gate("free")
    await asyncio.wait_for(started.wait(), SAFETY)
    assert queues.depths() == {}
    release.set()
    body = await asyncio.wait_for(task, SAFETY)
    assert body["noteText"] == "free"
    assert len(body["resourceUuid"]) == 32
