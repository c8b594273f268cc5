"""LDAP: log in with a directory's password as the account a directory entry is bound to.

A plugin of the identity service that touches neither it nor the core: its own tables
(``schema/db/ldap.py``), messages (``schema/api/ldap.py``) and service (``LdapService``, named
``ldap``, so ``disabled_services = ["ldap"]`` turns it off). Sessions it opens are ordinary
account sessions, so every other API, the gateway's ``AccountSessionAuth`` and ``LogOut`` treat
them as any other. ``LdapPasswordVerifier`` is also a ``mgmt.core.auth.PasswordVerifier``: added to
the identity service's chain (``IdentityService.add_password_verifier``, or the
``ringstack.password_verifiers`` entry point naming ``password_verifier`` below), it lets
``LogInByAccount`` take directory credentials too.

Every session ``LogInByLdap`` opens is recorded with the binding that granted it: deleting the
binding, or its server with ``Enforcing``, ends those sessions at once (on this node's session
cache directly, on the others' through the ``session.<uuid>.deleted`` events identity listens to).
Bindings are cascade children (``BINDING_RULE``) of their server, which they keep from a
Permissive deletion, and of their account, whose deletion takes them in either mode.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from pydantic import SecretStr
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from bus.errors import RingstackError, Sys, invalid_argument, not_found
from mgmt.config import NodeConfig
from mgmt.core.access import forget_sharing
from mgmt.core.auth import AuthSlot
from mgmt.core.cascade import CascadeRegistry, CascadeRule, announce_deleted
from mgmt.core.db import Database, create_guard
from mgmt.core.events import EventPublisher
from mgmt.core.query import QueryTarget, Relation, run_query
from mgmt.core.service import Account, CallContext, Service, handler
from mgmt.services.identity import sessions
from mgmt.services.identity.errors import AUTHENTICATION_FAILED
from mgmt.services.identity.ldap_directory import DirectorySettings, LdapDirectory, check_filter, dn_key
from schema.api.base import EmptyReply, QueryReply
from schema.api.identity import AccountInventory, SessionInventory, SessionReply
from schema.api.ldap import (
    AddLdapServer,
    CreateLdapBinding,
    DeleteLdapBinding,
    DeleteLdapServer,
    LdapBindingInventory,
    LdapBindingReply,
    LdapServerInventory,
    LdapServerReply,
    LogInByLdap,
    QueryLdapBinding,
    QueryLdapServer,
    UpdateLdapServer,
    check_server_settings,
)
from schema.db.identity import Account as AccountRow
from schema.db.identity import AccountSession
from schema.db.ldap import LdapBinding, LdapBindingSession, LdapServer, LdapServerSecret

log = logging.getLogger(__name__)

# The uid's entry proved the password, but is bound to no account (on any server tried).
NOT_BOUND: Final = "LDAP.NOT_BOUND"
# CreateLdapBinding to an admin account: the directory must never be able to grant admin rights.
CANNOT_BIND_ADMIN: Final = "LDAP.CANNOT_BIND_ADMIN"

SERVER_KIND: Final = "ldapServer"
BINDING_KIND: Final = "ldapBinding"
SERVER_QUERY = QueryTarget.for_model(LdapServer, LdapServerInventory, name=SERVER_KIND)
BINDING_QUERY = QueryTarget.for_model(
    LdapBinding,
    LdapBindingInventory,
    relations={
        "account": Relation(
            QueryTarget.for_model(AccountRow, AccountInventory), LdapBinding.account_uuid, AccountRow.uuid
        ),
        "ldapServer": Relation(SERVER_QUERY, LdapBinding.ldap_server_uuid, LdapServer.uuid),
    },
    name=BINDING_KIND,
)
# What changes how the directory is reached or searched: changing any of it is checked live.
_CONNECTION_FIELDS = (
    "url",
    "base",
    "username",
    "password",
    "encryption",
    "username_property",
    "filter",
    "user_dn_template",
    "timeout",
    "ca_certificate",
)


def _server_inventory(row: LdapServer) -> LdapServerInventory:
    return LdapServerInventory.model_validate(row, from_attributes=True)


def _binding_inventory(row: LdapBinding) -> LdapBindingInventory:
    return LdapBindingInventory.model_validate(row, from_attributes=True)


def _secret(value: SecretStr | None) -> str | None:
    return None if value is None else value.get_secret_value()


def _settings(session: Session, row: LdapServer) -> DirectorySettings:
    secret = session.get(LdapServerSecret, row.uuid)
    return DirectorySettings.of(row, None if secret is None else secret.password)


def _all_settings(session: Session, server_uuid: str | None) -> list[DirectorySettings]:
    """The server named, or every server, oldest first."""
    if server_uuid is not None:
        row = session.get(LdapServer, server_uuid)
        if row is None:
            raise not_found(SERVER_KIND, server_uuid)
        return [_settings(session, row)]
    rows = session.scalars(select(LdapServer).order_by(LdapServer.created_at, LdapServer.uuid)).all()
    return [_settings(session, row) for row in rows]


def _end_binding_sessions(session: Session, binding_uuids: list[str]) -> list[str]:
    """Delete the sessions these bindings granted (in the caller's transaction); their uuids."""
    if not binding_uuids:
        return []
    granted = list(
        session.scalars(
            select(LdapBindingSession.session_uuid).where(LdapBindingSession.binding_uuid.in_(binding_uuids))
        )
    )
    if granted:
        session.execute(delete(AccountSession).where(AccountSession.uuid.in_(granted)))
    return granted


def _binding_children(session: Session, parent_kind: str, parent_uuids: Sequence[str]) -> list[str]:
    column = LdapBinding.account_uuid if parent_kind == "account" else LdapBinding.ldap_server_uuid
    return list(session.scalars(select(LdapBinding.uuid).where(column.in_(parent_uuids))))


def _delete_bindings(session: Session, uuids: Sequence[str]) -> None:
    _end_binding_sessions(session, list(uuids))
    session.execute(delete(LdapBinding).where(LdapBinding.uuid.in_(uuids)))


# Bindings are children of their account and of their server. They keep a server from being
# deleted in Permissive mode, never an account: an account's deletion (either mode) takes them.
BINDING_RULE = CascadeRule(
    kind=BINDING_KIND,
    parents=("account", SERVER_KIND),
    children_of=_binding_children,
    delete=_delete_bindings,
    vetoes=(SERVER_KIND,),
)


# ---------------------------------------------------------------- the verifier


@dataclass(frozen=True, slots=True)
class LdapProof:
    """What a directory login proved: the binding it matched, and that binding's account."""

    binding_uuid: str
    ldap_server_uuid: str
    account: Account


def _bound(session: Session, server_uuid: str, key: str) -> LdapProof | None:
    row = session.execute(
        select(LdapBinding.uuid, AccountRow.uuid, AccountRow.name, AccountRow.type)
        .join(AccountRow, AccountRow.uuid == LdapBinding.account_uuid)
        .where(LdapBinding.ldap_server_uuid == server_uuid, LdapBinding.dn_key == key)
    ).first()
    if row is None:
        return None
    binding_uuid, account_uuid, name, account_type = row
    account = Account(uuid=account_uuid, name=name, is_admin=account_type == "Admin")
    return LdapProof(binding_uuid, server_uuid, account)


class LdapPasswordVerifier:
    """Directory credentials -> the account their entry is bound to (a ``PasswordVerifier``)."""

    name = "ldap"

    def __init__(self, db: Database, directory: LdapDirectory | None = None) -> None:
        self.db = db
        self.directory = directory or LdapDirectory()

    async def prove(self, uid: str, password: str, server_uuid: str | None = None) -> LdapProof:
        """Try the server named, or every server oldest first, until one proves a bound entry.

        ``IDENTITY.AUTHENTICATION_FAILED`` when no server accepts the password (an unknown uid
        and a wrong password alike); ``LDAP.NOT_BOUND`` when one did but the entry is bound to no
        account; a server's ``LDAP.UNREACHABLE`` (or other trouble) when it could not be asked and
        none of the others proved anything.
        """
        if not password:  # the schema already refuses it; a verifier must not rely on that
            raise RingstackError(AUTHENTICATION_FAILED, "wrong LDAP uid or password")
        servers = await self.db.run(_all_settings, server_uuid)
        if not servers:
            raise RingstackError(AUTHENTICATION_FAILED, "no LDAP server is configured")
        unusable: RingstackError | None = None
        proven_unbound = False
        for settings in servers:
            try:
                dn = await self.directory.authenticate(settings, uid, password)
            except RingstackError as exc:
                unusable = unusable or exc
                continue
            if dn is None:
                continue
            proof = await self.db.run(_bound, settings.uuid, dn_key(dn))
            if proof is not None:
                return proof
            proven_unbound = True
            log.info("%s: %r proved its password but is bound to no account", settings.label, dn)
        if unusable is not None:
            raise unusable
        if proven_unbound:
            raise RingstackError(
                NOT_BOUND,
                f"LDAP user {uid!r} is bound to no account; an administrator binds it with CreateLdapBinding",
            )
        raise RingstackError(AUTHENTICATION_FAILED, "wrong LDAP uid or password")

    async def verify(self, account_name: str, password: str) -> Account | None:
        try:
            return (await self.prove(account_name, password)).account
        except RingstackError as exc:
            if exc.code in (AUTHENTICATION_FAILED, NOT_BOUND):
                return None
            raise

    def close(self) -> None:
        self.directory.close()


def password_verifier(*, db: Database, config: NodeConfig) -> LdapPasswordVerifier:
    """The factory a ``ringstack.password_verifiers`` entry point names (see the module's docstring)."""
    return LdapPasswordVerifier(db)


# ---------------------------------------------------------------- the service


class LdapService(Service):
    name = "ldap"

    db: Database
    events: EventPublisher
    config: NodeConfig
    auth_slot: AuthSlot
    cascade: CascadeRegistry

    def __init__(self, **deps: Any) -> None:
        super().__init__(**deps)
        self.directory = LdapDirectory()
        self.verifier = LdapPasswordVerifier(self.db, self.directory)

    async def start(self) -> None:
        self.cascade.register(BINDING_RULE)

    async def stop(self) -> None:
        self.cascade.unregister(BINDING_KIND)
        self.directory.close()

    async def _sessions_ended(self, uuids: list[str]) -> None:
        invalidate = getattr(self.auth_slot.strategy, "invalidate_session", None)
        for uuid in uuids:
            if callable(invalidate):
                invalidate(uuid)  # this node's cache at once; the event tells the other nodes
            await self.events.resource_event("session", uuid, "deleted")

    # ------------------------------------------------------------ login

    @handler(LogInByLdap, serial=False)
    async def log_in_by_ldap(self, msg: LogInByLdap, ctx: CallContext) -> SessionReply:
        proof = await self.verifier.prove(msg.uid, msg.password, msg.ldap_server_uuid)

        def open_session(session: Session) -> SessionInventory | None:
            # KEY SHARE: a DeleteLdapBinding running now (it locks the binding FOR UPDATE) either
            # waits for this session to exist, then ends it, or has already deleted the binding.
            binding = session.scalars(
                select(LdapBinding)
                .where(LdapBinding.uuid == proof.binding_uuid)
                .with_for_update(key_share=True)
            ).first()
            if binding is None:
                return None
            inv = sessions.create_session(session, binding.account_uuid, self.config.session_timeout)
            session.add(LdapBindingSession(session_uuid=inv.uuid, binding_uuid=binding.uuid))
            return inv

        inv = await self.db.run(open_session)
        if inv is None:
            raise RingstackError(NOT_BOUND, f"LDAP user {msg.uid!r} was unbound while logging in")
        log.info(
            "LDAP login of %r (server %s) as account %r", msg.uid, proof.ldap_server_uuid, proof.account.name
        )
        # No event: a session uuid is a credential (as LogInByAccount).
        return SessionReply(inventory=inv)

    # ------------------------------------------------------------ servers

    @handler(AddLdapServer)
    async def add_ldap_server(self, msg: AddLdapServer, ctx: CallContext) -> LdapServerReply:
        uuid = ctx.new_resource_uuid(msg)
        if ctx.resumed:
            existing = await self.db.run(lambda s: s.get(LdapServer, uuid))
            if existing is not None:
                return LdapServerReply(inventory=_server_inventory(existing))
        if msg.filter is not None:
            check_filter(msg.filter)
        password = _secret(msg.password)
        settings = DirectorySettings(
            uuid=uuid,
            name=msg.name,
            url=msg.url,
            base=msg.base,
            username=msg.username,
            password=password,
            encryption=msg.encryption,
            username_property=msg.username_property,
            filter=msg.filter,
            user_dn_template=msg.user_dn_template,
            timeout=msg.timeout,
            ca_certificate=msg.ca_certificate,
        )
        await self.directory.check(settings)

        def create(session: Session) -> LdapServerInventory:
            existing = create_guard(session, LdapServer, uuid, ctx)
            if existing is not None:
                return _server_inventory(existing)
            row = LdapServer(
                uuid=uuid,
                name=msg.name,
                description=msg.description,
                owner_account_uuid=ctx.account.uuid,
                **{name: getattr(settings, name) for name in _CONNECTION_FIELDS if name != "password"},
            )
            session.add(row)
            session.flush()
            if password is not None:
                session.add(LdapServerSecret(ldap_server_uuid=uuid, password=password))
            return _server_inventory(row)

        inv = await self.db.run(create)
        await self.events.resource_event(SERVER_KIND, inv.uuid, "created", inv.to_wire())
        return LdapServerReply(inventory=inv)

    @handler(UpdateLdapServer)
    async def update_ldap_server(self, msg: UpdateLdapServer, ctx: CallContext) -> LdapServerReply:
        def load(session: Session) -> DirectorySettings:
            row = session.get(LdapServer, msg.uuid)
            if row is None:
                raise not_found(SERVER_KIND, msg.uuid)
            return _settings(session, row)

        current = await self.db.run(load)
        wanted = _merge(current, msg)
        if wanted.filter is not None:
            check_filter(wanted.filter)
        if any(getattr(wanted, f) != getattr(current, f) for f in _CONNECTION_FIELDS):
            await self.directory.check(wanted)

        def update(session: Session) -> LdapServerInventory:
            row = session.get(LdapServer, msg.uuid)
            if row is None:
                raise not_found(SERVER_KIND, msg.uuid)
            if msg.name is not None:
                row.name = msg.name
            if msg.description is not None:
                row.description = msg.description
            for name in _CONNECTION_FIELDS:
                if name != "password":
                    setattr(row, name, getattr(wanted, name))
            secret = session.get(LdapServerSecret, row.uuid)
            if wanted.password is None and secret is not None:
                session.delete(secret)
            elif wanted.password is not None and secret is None:
                session.add(LdapServerSecret(ldap_server_uuid=row.uuid, password=wanted.password))
            elif secret is not None and wanted.password is not None:
                secret.password = wanted.password
            session.flush()
            return _server_inventory(row)

        inv = await self.db.run(update)
        await self.events.resource_event(SERVER_KIND, inv.uuid, "updated", inv.to_wire())
        return LdapServerReply(inventory=inv)

    @handler(DeleteLdapServer)
    async def delete_ldap_server(self, msg: DeleteLdapServer, ctx: CallContext) -> EmptyReply:
        """Permissive refuses while the server has bindings; Enforcing deletes them, ending the
        sessions they granted. Deleting a server that is already gone succeeds (a retry is safe)."""

        def remove(session: Session) -> tuple[dict[str, list[str]], list[str]] | None:
            row = session.get(LdapServer, msg.uuid, with_for_update=True)
            if row is None:
                return None
            bindings = list(
                session.scalars(
                    select(LdapBinding.uuid).where(LdapBinding.ldap_server_uuid == msg.uuid).with_for_update()
                )
            )
            granted = list(
                session.scalars(
                    select(LdapBindingSession.session_uuid).where(
                        LdapBindingSession.binding_uuid.in_(bindings)
                    )
                )
            )
            cascaded = self.cascade.delete(session, SERVER_KIND, msg.uuid, msg.delete_mode)
            session.execute(delete(LdapServerSecret).where(LdapServerSecret.ldap_server_uuid == msg.uuid))
            forget_sharing(session, [msg.uuid])
            session.delete(row)
            return cascaded, granted

        removed = await self.db.run(remove)
        if removed is not None:
            cascaded, granted = removed
            await self._sessions_ended(granted)
            await announce_deleted(self.events, cascaded, SERVER_KIND, msg.uuid)
        return EmptyReply()

    @handler(QueryLdapServer, serial=False)
    async def query_ldap_server(self, msg: QueryLdapServer, ctx: CallContext) -> QueryReply:
        return await self.db.run(run_query, SERVER_QUERY, msg, ctx.account)

    # ------------------------------------------------------------ bindings

    @handler(CreateLdapBinding)
    async def create_ldap_binding(self, msg: CreateLdapBinding, ctx: CallContext) -> LdapBindingReply:
        uuid = ctx.new_resource_uuid(msg)

        def prepare(session: Session) -> LdapBinding | DirectorySettings:
            if ctx.resumed and (existing := session.get(LdapBinding, uuid)) is not None:
                return existing
            _bindable_account(session, msg.account_uuid)
            return _settings(session, _the_server(session, msg.ldap_server_uuid))

        prepared = await self.db.run(prepare)
        if isinstance(prepared, LdapBinding):
            return LdapBindingReply(inventory=_binding_inventory(prepared))
        settings = prepared
        dn = await self.directory.find_entry(settings, msg.ldap_uid)
        key = dn_key(dn)

        def create(session: Session) -> LdapBindingInventory:
            existing = create_guard(session, LdapBinding, uuid, ctx)
            if existing is not None:
                return _binding_inventory(existing)
            _bindable_account(session, msg.account_uuid)
            if session.get(LdapServer, settings.uuid, with_for_update=True) is None:
                raise not_found(SERVER_KIND, settings.uuid)
            taken = session.scalars(
                select(LdapBinding).where(
                    LdapBinding.ldap_server_uuid == settings.uuid, LdapBinding.dn_key == key
                )
            ).first()
            if taken is not None:
                raise RingstackError(
                    Sys.CONFLICT,
                    f"{dn!r} is already bound to account {taken.account_uuid} (binding {taken.uuid})",
                    details={"bindingUuid": taken.uuid, "accountUuid": taken.account_uuid},
                )
            row = LdapBinding(
                uuid=uuid,
                ldap_server_uuid=settings.uuid,
                ldap_uid=msg.ldap_uid,
                ldap_dn=dn,
                dn_key=key,
                account_uuid=msg.account_uuid,
            )
            session.add(row)
            session.flush()
            session.refresh(row)  # created_at, from the database
            return _binding_inventory(row)

        inv = await self.db.run(create)
        await self.events.resource_event(BINDING_KIND, inv.uuid, "created", inv.to_wire())
        return LdapBindingReply(inventory=inv)

    @handler(DeleteLdapBinding)
    async def delete_ldap_binding(self, msg: DeleteLdapBinding, ctx: CallContext) -> EmptyReply:
        """Deleting a binding that is already gone succeeds, so a retried delete is safe."""

        def remove(session: Session) -> list[str] | None:
            row = session.get(LdapBinding, msg.uuid, with_for_update=True)
            if row is None:
                return None
            ended = _end_binding_sessions(session, [row.uuid])
            session.delete(row)
            return ended

        ended = await self.db.run(remove)
        if ended is not None:
            await self._sessions_ended(ended)
            await self.events.resource_event(BINDING_KIND, msg.uuid, "deleted")
        return EmptyReply()

    @handler(QueryLdapBinding, serial=False)
    async def query_ldap_binding(self, msg: QueryLdapBinding, ctx: CallContext) -> QueryReply:
        return await self.db.run(run_query, BINDING_QUERY, msg, ctx.account)


def _bindable_account(session: Session, account_uuid: str) -> None:
    account = session.get(AccountRow, account_uuid)
    if account is None:
        raise not_found("account", account_uuid)
    if account.type == "Admin":
        raise RingstackError(
            CANNOT_BIND_ADMIN,
            f"account {account.name!r} is an admin; only normal accounts can be bound to LDAP users",
            details={"accountUuid": account_uuid},
        )


def _the_server(session: Session, server_uuid: str | None) -> LdapServer:
    if server_uuid is not None:
        row = session.get(LdapServer, server_uuid)
        if row is None:
            raise not_found(SERVER_KIND, server_uuid)
        return row
    count = session.scalar(select(func.count()).select_from(LdapServer)) or 0
    if count != 1:
        raise invalid_argument(
            "give ldapServerUuid: "
            + ("no LDAP server exists" if count == 0 else f"{count} LDAP servers exist"),
            field="ldapServerUuid",
        )
    return session.scalars(select(LdapServer)).one()


def _merge(current: DirectorySettings, msg: UpdateLdapServer) -> DirectorySettings:
    """The settings an update asks for: given fields replace stored ones, "" clears the clearable."""

    def clearable(new: str | None, old: str | None) -> str | None:
        if new is None:
            return old
        return new or None

    username = clearable(msg.username, current.username)
    if msg.username == "":
        password = None  # no service account any more: anonymous searches
        if msg.password is not None:
            raise invalid_argument("a password needs a username (the service account's DN)", field="password")
    else:
        password = _secret(msg.password) if msg.password is not None else current.password
    wanted = DirectorySettings(
        uuid=current.uuid,
        name=msg.name if msg.name is not None else current.name,
        url=msg.url if msg.url is not None else current.url,
        base=msg.base if msg.base is not None else current.base,
        username=username,
        password=password,
        encryption=msg.encryption if msg.encryption is not None else current.encryption,
        username_property=msg.username_property or current.username_property,
        filter=clearable(msg.filter, current.filter),
        user_dn_template=clearable(msg.user_dn_template, current.user_dn_template),
        timeout=msg.timeout if msg.timeout is not None else current.timeout,
        ca_certificate=clearable(msg.ca_certificate, current.ca_certificate),
    )
    try:
        check_server_settings(
            wanted.url,
            wanted.encryption,
            wanted.username,
            wanted.password is not None,
            wanted.user_dn_template,
            wanted.filter,
            wanted.ca_certificate,
        )
    except ValueError as exc:
        raise invalid_argument(f"invalid UpdateLdapServer: {exc}") from None
    return wanted
