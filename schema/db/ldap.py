"""LDAP: directory servers logins are checked against, and the bindings of directory users to accounts.

The service account's password lives in ``ldap_server_secret``, apart from the server row, so no
query, inventory or generic row dump reaches it (as ``host_secret`` does for SSH credentials).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, ForeignKey, Integer, String, Text, UniqueConstraint, func
from sqlalchemy.orm import Mapped, mapped_column

from schema.db.base import UUID_LENGTH, Base, ResourceMixin


class LdapServer(ResourceMixin, Base):
    """Where and how to check a directory user's password (see ``schema.api.ldap.AddLdapServer``)."""

    __tablename__ = "ldap_server"
    resource_type = "ldapServer"

    url: Mapped[str] = mapped_column(String(1024))  # ldap://host[:port] or ldaps://host[:port]
    base: Mapped[str] = mapped_column(String(1024))  # the search base DN
    username: Mapped[str | None] = mapped_column(String(1024))  # the service account's DN; NULL: anonymous
    encryption: Mapped[str] = mapped_column(String(16))  # None | TLS | StartTLS
    username_property: Mapped[str] = mapped_column(String(64))  # uid, sAMAccountName, ...
    filter: Mapped[str | None] = mapped_column(String(1024))  # ANDed with (<usernameProperty>=<uid>)
    user_dn_template: Mapped[str | None] = mapped_column(String(1024))  # direct bind: no search
    timeout: Mapped[int] = mapped_column(Integer)  # seconds
    ca_certificate: Mapped[str | None] = mapped_column(Text)  # PEM; NULL: the system's trust store


class LdapServerSecret(Base):
    """The service account's password, in clear: a simple bind needs it. Never shown."""

    __tablename__ = "ldap_server_secret"

    ldap_server_uuid: Mapped[str] = mapped_column(
        String(UUID_LENGTH), ForeignKey("ldap_server.uuid", ondelete="CASCADE"), primary_key=True
    )
    password: Mapped[str] = mapped_column(Text)


class LdapBinding(Base):
    """A directory entry allowed to log in as an account (``LogInByLdap``).

    ``dn_key`` is the entry's DN normalised (lower case, no blanks around separators): logins
    match on it, so a user typing ``Alice`` for ``alice`` still finds the binding, and one entry is
    bound at most once per server. No ``owner_account_uuid``: a binding belongs to its server, and
    goes with its account (ON DELETE CASCADE) rather than keeping that account from being deleted.
    """

    __tablename__ = "ldap_binding"
    __table_args__ = (UniqueConstraint("ldap_server_uuid", "dn_key"),)

    uuid: Mapped[str] = mapped_column(String(UUID_LENGTH), primary_key=True)
    # No separate index: the unique constraint's index leads with it.
    ldap_server_uuid: Mapped[str] = mapped_column(
        String(UUID_LENGTH), ForeignKey("ldap_server.uuid", ondelete="CASCADE")
    )
    ldap_uid: Mapped[str] = mapped_column(String(255))  # as the admin gave it
    ldap_dn: Mapped[str] = mapped_column(String(1024))  # as the directory returned it
    dn_key: Mapped[str] = mapped_column(String(1024))
    account_uuid: Mapped[str] = mapped_column(
        String(UUID_LENGTH), ForeignKey("account.uuid", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class LdapBindingSession(Base):
    """Which binding a session was granted through: deleting the binding (or its server) ends it."""

    __tablename__ = "ldap_binding_session"

    session_uuid: Mapped[str] = mapped_column(
        String(UUID_LENGTH), ForeignKey("account_session.uuid", ondelete="CASCADE"), primary_key=True
    )
    binding_uuid: Mapped[str] = mapped_column(
        String(UUID_LENGTH), ForeignKey("ldap_binding.uuid", ondelete="CASCADE"), index=True
    )
