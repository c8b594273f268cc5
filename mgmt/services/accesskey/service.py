"""Access keys: per-account broker credentials for API clients, issued through the API.

``CreateAccessKey`` makes a row (the key id is its uuid, only a hash of the secret is kept), then
the key's RabbitMQ user ``<ns>.key.<id>`` with the secret as its password and least privilege
(``mgmt.core.brokeradmin.client_permissions``): publish only to the API entry exchange, declare,
bind and read only ``<ns>.reply.<id>.*``, bind only to its own account's events. The secret is in
that reply alone; the request is no job, so it is stored nowhere.

``DeleteAccessKey`` deletes the broker user first (RabbitMQ closes its connections), then the row.
A key goes with its account (a cascade child of ``account``, in either deletion mode); the broker
users of keys whose rows are gone are deleted when their ``access_key.<id>.deleted`` event comes
(one node takes each, from a shared queue), and by a sweep when a node starts, so a lost event
leaves no usable user behind for long. Broker users are managed with ``rabbitmqctl`` on the node's
machine, as the KVM hosts' agent users are (``mgmt.core.brokeradmin``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from bus.aio import AsyncBus, Consumer
from bus.envelope import Envelope, new_uuid
from bus.errors import RingstackError, Sys, not_found
from mgmt.config import NodeConfig
from mgmt.core.access import load_owned
from mgmt.core.brokeradmin import BrokerAdmin, vhost_of
from mgmt.core.cascade import CascadeRegistry, CascadeRule
from mgmt.core.db import Database
from mgmt.core.events import EventPublisher
from mgmt.core.query import QueryTarget, run_query
from mgmt.core.service import CallContext, Service, handler
from schema.api.accesskey import (
    AccessKeyCreatedReply,
    AccessKeyInventory,
    CreateAccessKey,
    DeleteAccessKey,
    QueryAccessKey,
)
from schema.api.base import EmptyReply, Event, QueryReply
from schema.db.accesskey import AccessKey
from schema.db.identity import Account as AccountRow

log = logging.getLogger(__name__)

KIND = "access_key"
QUERY = QueryTarget.for_model(AccessKey, AccessKeyInventory, name=KIND)


def hash_secret(secret: str) -> str:
    return "sha256$" + hashlib.sha256(secret.encode()).hexdigest()


def _children(session: Session, parent_kind: str, parent_uuids: Sequence[str]) -> list[str]:
    return list(session.scalars(select(AccessKey.uuid).where(AccessKey.owner_account_uuid.in_(parent_uuids))))


def _delete_rows(session: Session, uuids: Sequence[str]) -> None:
    session.execute(delete(AccessKey).where(AccessKey.uuid.in_(uuids)))


# Keys never keep their account from being deleted: they go with it.
CASCADE_RULE = CascadeRule(
    kind=KIND, parents=("account",), children_of=_children, delete=_delete_rows, vetoes=()
)


class AccessKeyService(Service):
    name = "accesskey"

    db: Database
    events: EventPublisher
    bus: AsyncBus
    config: NodeConfig
    cascade: CascadeRegistry

    def __init__(self, **deps: Any) -> None:
        super().__init__(**deps)
        self.broker = BrokerAdmin()
        self._consumer: Consumer | None = None
        self._sweeping: asyncio.Task[None] | None = None
        # Keys whose users this node deleted itself: their deletion events need no rabbitmqctl run.
        self._deleted_here: set[str] = set()

    @property
    def namespace(self) -> str:
        return self.bus.topology.namespace

    async def start(self) -> None:
        self.cascade.register(CASCADE_RULE)
        # Shared and durable: each deletion is handled by one node, even one started later.
        self._consumer = self.bus.consume(self.bus.topology.access_key_deletions_queue, self._on_deleted)
        await self.bus.start_consumer(self._consumer)
        # In the background: rabbitmqctl takes a second or two, and the node need not wait for it.
        self._sweeping = asyncio.create_task(self._sweep_logged(), name="accesskey-sweep")

    async def _sweep_logged(self) -> None:
        try:
            await self.sweep()
        except RingstackError as exc:  # a node without rabbitmqctl still serves everything else
            log.warning("access keys: broker users not swept: %s", exc.message)

    async def stop(self) -> None:
        self.cascade.unregister(KIND)
        if self._sweeping is not None:
            self._sweeping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeping
        if self._consumer is not None:
            await self.bus.cancel(self._consumer)
            self._consumer = None

    async def sweep(self) -> list[str]:
        """Delete the broker users of keys that no longer exist; returns their key ids."""
        users = await self._broker(self.broker.client_keys, self.namespace)

        def existing(session: Session) -> set[str]:
            return set(session.scalars(select(AccessKey.uuid).where(AccessKey.uuid.in_(users))))

        orphans = sorted(users - await self.db.run_unfenced(existing)) if users else []
        for key in orphans:
            await self._broker(self.broker.delete_client_user, self.namespace, key)
        if orphans:
            log.info("access keys: deleted %d broker users of deleted keys", len(orphans))
        return orphans

    async def _on_deleted(self, env: Envelope) -> None:
        try:
            key = Event.from_wire(env.body).resource_uuid
        except ValueError:
            return

        def exists(session: Session) -> bool:
            return session.get(AccessKey, key) is not None

        if key in self._deleted_here:  # DeleteAccessKey on this node already did it
            self._deleted_here.discard(key)
        elif not await self.db.run_unfenced(exists):
            await self._broker(self.broker.delete_client_user, self.namespace, key)

    async def _broker(self, fn: Any, *args: Any) -> Any:
        """A blocking ``rabbitmqctl`` call, off the event loop."""
        return await asyncio.to_thread(fn, *args)

    # ------------------------------------------------------------------ API

    @handler(CreateAccessKey, serial=False)
    async def create(self, msg: CreateAccessKey, ctx: CallContext) -> AccessKeyCreatedReply:
        caller = ctx.account
        account_uuid = msg.account_uuid or caller.uuid
        if account_uuid != caller.uuid and not caller.is_admin:
            # As if it did not exist: a normal account learns nothing of other accounts.
            raise not_found("account", account_uuid)
        key_id, secret = new_uuid(), secrets.token_urlsafe(32)

        def insert(session: Session) -> tuple[AccessKeyInventory, bool]:
            account = session.get(AccountRow, account_uuid)
            if account is None:
                raise not_found("account", account_uuid)
            row = AccessKey(
                uuid=key_id,
                name=msg.name,
                description=msg.description,
                owner_account_uuid=account_uuid,
                secret_hash=hash_secret(secret),
            )
            session.add(row)
            session.flush()
            return AccessKeyInventory.model_validate(row), account.type == "Admin"

        inv, is_admin = await self.db.run(insert)
        try:
            username = await self._broker(
                self.broker.add_client_user,
                self.namespace,
                key_id,
                secret,
                account_uuid,
                is_admin,
                vhost_of(self.config.broker_url),
            )
        except RingstackError as exc:
            await self.db.run(_delete_rows, [key_id])
            raise RingstackError(
                Sys.UNAVAILABLE, f"the access key's broker user could not be made: {exc.message}", cause=exc
            ) from None
        await self.events.resource_event(KIND, key_id, "created", inv.to_wire(), account_uuid=account_uuid)
        return AccessKeyCreatedReply(
            inventory=inv, access_key_id=key_id, access_key_secret=secret, broker_username=username
        )

    @handler(DeleteAccessKey)
    async def delete(self, msg: DeleteAccessKey, ctx: CallContext) -> EmptyReply:
        def owned(session: Session) -> str:
            # A key that is gone and another account's key are both "not found": no oracle.
            row = load_owned(session, AccessKey, msg.uuid, ctx.account, KIND)
            return str(row.owner_account_uuid)

        owner = await self.db.run(owned)
        await self._broker(self.broker.delete_client_user, self.namespace, msg.uuid)
        await self.db.run(_delete_rows, [msg.uuid])
        if len(self._deleted_here) < 10_000:
            self._deleted_here.add(msg.uuid)
        await self.events.resource_event(KIND, msg.uuid, "deleted", account_uuid=owner)
        return EmptyReply()

    @handler(QueryAccessKey, serial=False)
    async def query(self, msg: QueryAccessKey, ctx: CallContext) -> QueryReply:
        return await self.db.run(run_query, QUERY, msg, ctx.account)
