"""Sessions for test clients, and a test-only service that creates account-owned rows under a quota.

Every API except the public ones needs a session, so the ``client`` fixture is a ``SessionBus``:
an ``AsyncBus`` whose ``api()`` logs in as the bootstrap admin on first use and carries that
session. ``client.login(name, password)`` gives an ``AccountClient`` that calls as another account
over the same connection; ``client.as_session(None)`` calls with no session at all.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from bus.aio import AsyncBus
from bus.sync import SyncClient
from mgmt.core import quota
from mgmt.core.access import load_visible
from mgmt.core.db import Database, create_guard
from mgmt.core.service import CallContext, Service, handler
from schema.api.base import ApiMessage, CreateMessage, Reply
from schema.db.zone import Zone
from schema.registry import load_all

ADMIN_NAME = "admin"
ADMIN_PASSWORD = "password"  # the default admin_initial_password


def _is_public(name: str) -> bool:
    message = load_all().get(name)
    return message is not None and message.public


class AccountClient:
    """Calls APIs as one account (or with no session: ``session=None``) over a shared bus."""

    def __init__(self, bus: AsyncBus, session: str | None, account_uuid: str | None = None) -> None:
        self.bus = bus
        self.session = session
        self.account_uuid = account_uuid

    async def api(self, name: str, body: dict[str, Any] | None = None, *, timeout: float | None = None):
        # AsyncBus.api itself, not the SessionBus override: this session (or none) is sent as is.
        return await AsyncBus.api(self.bus, name, body, session=self.session, timeout=timeout)


class SessionBus(AsyncBus):
    """An ``AsyncBus`` whose ``api()`` carries the admin's session unless given another one."""

    def __init__(self, *args: Any, credentials: tuple[str, str] = (ADMIN_NAME, ADMIN_PASSWORD), **kw: Any):
        super().__init__(*args, **kw)
        self.credentials = credentials
        self.session: str | None = None
        self.account_uuid: str | None = None
        self._login_lock = asyncio.Lock()

    async def api(
        self,
        name: str,
        body: dict[str, Any] | None = None,
        *,
        session: str | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        if session is None and not _is_public(name):
            session = await self.admin_session()
        return await super().api(name, body, session=session, timeout=timeout)

    async def admin_session(self) -> str:
        """Log in on first use (lazily: some tests start their node after the client)."""
        async with self._login_lock:
            if self.session is None:
                name, password = self.credentials
                inv = (await super().api("LogInByAccount", {"accountName": name, "password": password}))[
                    "inventory"
                ]
                self.session, self.account_uuid = inv["uuid"], inv["accountUuid"]
        return self.session

    async def login(self, name: str, password: str) -> AccountClient:
        inv = (await super().api("LogInByAccount", {"accountName": name, "password": password}))["inventory"]
        return AccountClient(self, inv["uuid"], inv["accountUuid"])

    def as_session(self, session: str | None) -> AccountClient:
        return AccountClient(self, session)

    async def new_account(
        self, name: str, password: str = "secret-pw-1", account_type: str = "Normal"
    ) -> AccountClient:
        """Create an account (as admin) and log in as it."""
        await self.api("CreateAccount", {"name": name, "password": password, "type": account_type})
        return await self.login(name, password)


class SessionSyncClient(SyncClient):
    """The sync client's counterpart of ``SessionBus``."""

    def __init__(self, *args: Any, credentials: tuple[str, str] = (ADMIN_NAME, ADMIN_PASSWORD), **kw: Any):
        super().__init__(*args, **kw)
        self.credentials = credentials
        self.session: str | None = None

    def api(
        self,
        name: str,
        body: dict[str, Any] | None = None,
        *,
        session: str | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        if session is None and not _is_public(name):
            if self.session is None:
                name_, password = self.credentials
                reply = super().api("LogInByAccount", {"accountName": name_, "password": password})
                self.session = reply["inventory"]["uuid"]
            session = self.session
        return super().api(name, body, session=session, timeout=timeout)


def cli_login(env: Mapping[str, str], config_home: Path) -> dict[str, str]:
    """Log the CLI in as the admin; returns the environment whose later CLI runs use that session.

    The session file goes to ``config_home`` (XDG_CONFIG_HOME), never the real ~/.config."""
    from tests.support.procs import run_cli

    env = {**env, "XDG_CONFIG_HOME": str(config_home)}
    env.pop("RINGSTACK_SESSION", None)
    result = run_cli(["LogInByAccount", f"accountName={ADMIN_NAME}", f"password={ADMIN_PASSWORD}"], env)
    assert result.returncode == 0, result.stderr
    return env


# ---------------------------------------------------------------- a test service under a quota

TEST_QUOTA = "test.ownedZone.num"
quota.define_quota(TEST_QUOTA, 5, "zones created by IdentityTestMakeZone (tests only)")


def _owned_zones(session: Session, account_uuid: str) -> int:
    return int(session.scalar(select(func.count()).where(Zone.owner_account_uuid == account_uuid)) or 0)


quota.register_usage(TEST_QUOTA, _owned_zones)


class IdentityTestZoneReply(Reply):
    uuid: str
    owner_account_uuid: str | None


class IdentityTestMakeZone(CreateMessage):
    """Create a zone owned by the caller, under the test quota: what a tenant resource's create
    looks like (zones themselves are admin-only, but visibility and quota rules are generic)."""

    __test__ = False
    service: ClassVar[str] = "identitytest"
    reply = IdentityTestZoneReply

    name: str = Field(min_length=1, max_length=255)


class IdentityTestUseZone(ApiMessage):
    """Read a zone the caller may see (own or shared), as a "use" of a resource would."""

    __test__ = False
    service: ClassVar[str] = "identitytest"
    mutating: ClassVar[bool] = False
    reply = IdentityTestZoneReply

    zone_uuid: str


class IdentityTestService(Service):
    __test__ = False
    name = "identitytest"

    db: Database

    @handler(IdentityTestMakeZone)
    async def make_zone(self, msg: IdentityTestMakeZone, ctx: CallContext) -> IdentityTestZoneReply:
        uuid = ctx.new_resource_uuid(msg)

        def create(session: Session) -> IdentityTestZoneReply:
            if create_guard(session, Zone, uuid, ctx) is None:
                quota.check_quota(session, ctx.account, TEST_QUOTA, 1)
                session.add(
                    Zone(uuid=uuid, name=msg.name, state="Enabled", owner_account_uuid=ctx.account.uuid)
                )
            return IdentityTestZoneReply(uuid=uuid, owner_account_uuid=ctx.account.uuid)

        return await self.db.run(create)

    @handler(IdentityTestUseZone, serial=False)
    async def use_zone(self, msg: IdentityTestUseZone, ctx: CallContext) -> IdentityTestZoneReply:
        def use(session: Session) -> IdentityTestZoneReply:
            zone = load_visible(session, Zone, msg.zone_uuid, ctx.account, "zone")
            return IdentityTestZoneReply(uuid=zone.uuid, owner_account_uuid=zone.owner_account_uuid)

        return await self.db.run(use)
