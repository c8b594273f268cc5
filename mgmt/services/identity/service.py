"""Identity: accounts, login sessions, the node's authentication strategy, sharing and quotas.

On start the service makes sure the bootstrap admin exists, installs ``AccountSessionAuth`` as the
node's ``auth`` (every non-public API then needs a valid session), and subscribes to the session
and account deletions of every node, so ``LogOut`` and ``DeleteAccount`` end a session's cached
validity everywhere at once (if such an event is lost, e.g. during a broker reconnect, the cache's
5-second lifetime still bounds it).
"""

from __future__ import annotations

import logging
from importlib.metadata import entry_points
from typing import Any

from sqlalchemy.orm import Session

from bus.aio import AsyncBus, Consumer
from bus.envelope import Envelope
from bus.errors import RingstackError, invalid_argument, not_found
from mgmt.config import NodeConfig
from mgmt.core import quota
from mgmt.core.auth import (
    PASSWORD_VERIFIER_ENTRY_POINTS,
    AccountSessionAuth,
    AuthSlot,
    PasswordVerifier,
)
from mgmt.core.cascade import CascadeRegistry
from mgmt.core.db import Database
from mgmt.core.events import EventPublisher
from mgmt.core.query import QueryTarget, run_query
from mgmt.core.service import CallContext, Service, handler
from mgmt.services.identity import accounts, quotas, sessions, sharing
from mgmt.services.identity.errors import AUTHENTICATION_FAILED
from schema.api.base import EmptyReply, Event, QueryReply
from schema.api.identity import (
    AccountInventory,
    AccountReply,
    CreateAccount,
    DeleteAccount,
    LogInByAccount,
    LogOut,
    QueryAccount,
    QueryQuota,
    QuotaInventory,
    QuotaReply,
    RevokeResourceSharing,
    SessionReply,
    ShareResource,
    UpdateAccount,
    UpdateQuota,
    ValidateSession,
    ValidateSessionReply,
)
from schema.db.identity import Account as AccountRow

log = logging.getLogger(__name__)

ACCOUNT_QUERY = QueryTarget.for_model(AccountRow, AccountInventory)
# Deletions every node's session cache must hear of.
INVALIDATING_EVENTS = ("session.*.deleted", "account.*.deleted")


class IdentityService(Service):
    name = "identity"

    db: Database
    events: EventPublisher
    bus: AsyncBus
    config: NodeConfig
    auth_slot: AuthSlot
    cascade: CascadeRegistry

    def __init__(self, **deps: Any) -> None:
        super().__init__(**deps)
        # A reconnect may have lost invalidation events: entries cached before it are dropped.
        self.auth = AccountSessionAuth(self.db, feed_epoch=lambda: self.bus.connection_count)
        self.local = sessions.LocalPasswordVerifier(self.db)
        self.verifiers: list[PasswordVerifier] = [self.local]
        self._consumer: Consumer | None = None

    async def start(self) -> None:
        quota.configure_defaults(self.config.quota_defaults)
        for ep in entry_points(group=PASSWORD_VERIFIER_ENTRY_POINTS):
            # An entry point names a factory taking the node's database and config.
            self.add_password_verifier(ep.load()(db=self.db, config=self.config))
        await self._ensure_admin()
        self._consumer = self.bus.consume(
            self.bus.topology.event_queue(f"identity.{self.bus.process_uuid}", *INVALIDATING_EVENTS),
            self._on_invalidation,
        )
        await self.bus.start_consumer(self._consumer)
        self.auth_slot.install_default(self.auth)

    async def stop(self) -> None:
        if self._consumer is not None:
            await self.bus.cancel(self._consumer)
            self._consumer = None

    def add_password_verifier(self, verifier: PasswordVerifier, *, first: bool = False) -> None:
        """Add a way of checking login credentials; they are tried in order, first match wins."""
        if first:
            self.verifiers.insert(0, verifier)
        else:
            self.verifiers.append(verifier)

    async def _ensure_admin(self) -> None:
        if await self.db.run(accounts.admin_exists):
            return
        password_hash = await self.local.hash(self.config.admin_initial_password)
        created = await self.db.run(accounts.insert_admin, password_hash)
        if created is not None:
            log.info("created the bootstrap admin account %r (%s)", created.name, created.uuid)
            await self.events.resource_event("account", created.uuid, "created", created.to_wire())

    async def _on_invalidation(self, env: Envelope) -> None:
        try:
            event = Event.from_wire(env.body)
        except ValueError:
            log.warning("ignoring an unreadable %s event", env.name)
            return
        if event.resource_type == "session":
            self.auth.invalidate_session(event.resource_uuid)
        elif event.resource_type == "account":
            self.auth.invalidate_account(event.resource_uuid)

    # ------------------------------------------------------------ sessions

    @handler(LogInByAccount)
    async def log_in(self, msg: LogInByAccount, ctx: CallContext) -> SessionReply:
        account = None
        for verifier in self.verifiers:
            account = await verifier.verify(msg.account_name, msg.password)
            if account is not None:
                break
        if account is None:
            # One answer for an unknown name and a wrong password (and equally slow: see
            # passwords.burn_verification_time), so a caller cannot probe for account names.
            raise RingstackError(AUTHENTICATION_FAILED, "wrong account name or password")
        inv = await self.db.run(sessions.create_session, account.uuid, self.config.session_timeout)
        # No event: a session uuid is a credential and must not travel on the events exchange.
        return SessionReply(inventory=inv)

    @handler(LogOut)
    async def log_out(self, msg: LogOut, ctx: CallContext) -> EmptyReply:
        """Ending a session that is gone (or never was) succeeds, so a retried LogOut is safe."""
        deleted = await self.db.run(sessions.delete_session, msg.session_uuid)
        self.auth.invalidate_session(msg.session_uuid)
        await self._sessions_ended([msg.session_uuid] if deleted else [])
        return EmptyReply()

    async def _sessions_ended(self, uuids: list[str]) -> None:
        for uuid in uuids:
            self.auth.invalidate_session(uuid)
            # Tells every node to drop the session from its cache; the uuid is worthless now.
            await self.events.resource_event("session", uuid, "deleted")

    @handler(ValidateSession, serial=False)
    async def validate_session(self, msg: ValidateSession, ctx: CallContext) -> ValidateSessionReply:
        return ValidateSessionReply(valid_session=await self.auth.lookup(msg.session_uuid) is not None)

    # ------------------------------------------------------------ accounts

    @handler(CreateAccount)
    async def create_account(self, msg: CreateAccount, ctx: CallContext) -> AccountReply:
        uuid = ctx.new_resource_uuid(msg)
        password_hash = await self.local.hash(msg.password)
        inv = await self.db.run(accounts.create, msg, uuid, password_hash, ctx)
        await self.events.resource_event("account", inv.uuid, "created", inv.to_wire())
        return AccountReply(inventory=inv)

    @handler(UpdateAccount)
    async def update_account(self, msg: UpdateAccount, ctx: CallContext) -> AccountReply:
        password_hash = None if msg.password is None else await self.local.hash(msg.password)
        inv, ended = await self.db.run(accounts.update, msg, password_hash, ctx.account)
        await self._sessions_ended(ended)
        await self.events.resource_event("account", inv.uuid, "updated", inv.to_wire())
        return AccountReply(inventory=inv)

    @handler(DeleteAccount)
    async def delete_account(self, msg: DeleteAccount, ctx: CallContext) -> EmptyReply:
        deleted = await self.db.run(
            accounts.delete_account, msg.uuid, msg.delete_mode, ctx.account, self.cascade
        )
        if deleted is not None:
            self.auth.invalidate_account(msg.uuid)
            for kind, uuids in deleted.cascaded.items():
                for uuid in uuids:
                    await self.events.resource_event(kind, uuid, "deleted")
            await self.events.resource_event("account", msg.uuid, "deleted")
        return EmptyReply()

    @handler(QueryAccount, serial=False)
    async def query_account(self, msg: QueryAccount, ctx: CallContext) -> QueryReply:
        return await self.db.run(run_query, ACCOUNT_QUERY, msg, ctx.account)

    # ------------------------------------------------------------ sharing

    @handler(ShareResource)
    async def share_resource(self, msg: ShareResource, ctx: CallContext) -> EmptyReply:
        changes = await self.db.run(sharing.share, msg, ctx.account)
        await self._sharing_events(changes, "shared")
        return EmptyReply()

    @handler(RevokeResourceSharing)
    async def revoke_resource_sharing(self, msg: RevokeResourceSharing, ctx: CallContext) -> EmptyReply:
        changes = await self.db.run(sharing.revoke, msg, ctx.account)
        await self._sharing_events(changes, "revoked")
        return EmptyReply()

    async def _sharing_events(self, changes: list[sharing.Change], action: str) -> None:
        for change in changes:
            body = {"accountUuids": change.account_uuids, "toPublic": change.to_public}
            await self.events.resource_event(change.kind, change.uuid, action, body)

    # ------------------------------------------------------------ quotas

    @handler(QueryQuota, serial=False)
    async def query_quota(self, msg: QueryQuota, ctx: CallContext) -> QueryReply:
        return await self.db.run(run_query, quotas.query_target(), msg, ctx.account)

    @handler(UpdateQuota)
    async def update_quota(self, msg: UpdateQuota, ctx: CallContext) -> QuotaReply:
        if not quota.is_defined(msg.name):
            raise invalid_argument(
                f"unknown quota {msg.name!r}; quotas: {', '.join(quota.quota_names())}", field="name"
            )

        def update(session: Session) -> QuotaInventory:
            if session.get(AccountRow, msg.identity_uuid) is None:
                raise not_found("account", msg.identity_uuid)
            return quotas.set_override(session, msg.identity_uuid, msg.name, msg.value)

        inv = await self.db.run(update)
        await self.events.resource_event("quota", inv.uuid, "updated", inv.to_wire())
        return QuotaReply(inventory=inv)
