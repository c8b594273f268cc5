"""LDAP: directory servers, bindings of directory users to accounts, and logging in by LDAP.

ZStack's API names (its ``plugin/ldap``): ``AddLdapServer``, ``UpdateLdapServer``,
``DeleteLdapServer``, ``QueryLdapServer``, ``CreateLdapBinding``, ``DeleteLdapBinding``,
``QueryLdapBinding``, ``LogInByLdap``. Everything but ``LogInByLdap`` is the admin's.

How a login is checked (``LogInByLdap uid=alice password=...``):

- search mode (the default): bind as the service account (``username``/``password``; anonymous
  when neither is given), search ``base`` for ``(&<filter>(<usernameProperty>=alice))`` (the uid
  escaped, RFC 4515), which must find exactly one entry, then bind as that entry's DN with the
  password given;
- template mode (``userDnTemplate``, e.g. ``uid={username},ou=people,dc=example,dc=com``): bind
  directly as the template's DN (the uid escaped, RFC 4514); no service account is needed.

A successful bind proves the password; the entry must also be bound to an account
(``CreateLdapBinding``), whose session the login returns. The service password is write-only: no
reply, event or query shows it, and a finished job keeps it masked.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, ClassVar, Literal, Self

from pydantic import ConfigDict, Field, SecretStr, model_validator

from schema.api.base import (
    ApiMessage,
    CreateMessage,
    DeleteMessage,
    Description,
    EmptyReply,
    Inventory,
    Name,
    QueryMessage,
    QueryReply,
    Reply,
    ResourceMessage,
    Uuid,
    WireModel,
)
from schema.api.identity import SessionReply

SERVICE = "ldap"
USERNAME_PLACEHOLDER = "{username}"

# None: plain LDAP (ldap://); TLS: LDAP over TLS (ldaps://); StartTLS: ldap:// upgraded to TLS.
LdapEncryption = Literal["None", "TLS", "StartTLS"]
LdapUrl = Annotated[
    str,
    Field(
        min_length=1,
        max_length=1024,
        pattern=r"^ldaps?://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?/?$",
        description="ldap://host[:port] or ldaps://host[:port]",
    ),
]
Dn = Annotated[str, Field(min_length=1, max_length=1024, pattern=r"^\S(?:.*\S)?$")]
AttributeName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z][A-Za-z0-9-]*$")]
# An admin's filter, ANDed with the uid match (the node parses it fully before storing it).
LdapFilter = Annotated[str, Field(min_length=3, max_length=1024, pattern=r"^\(.*\)$")]
UserDnTemplate = Annotated[str, Field(min_length=1, max_length=1024)]
ServicePassword = Annotated[SecretStr, Field(min_length=1, max_length=1024)]
Timeout = Annotated[int, Field(ge=1, le=60, description="seconds, for connecting and for each answer")]
CaCertificate = Annotated[
    str,
    Field(min_length=1, max_length=65536, description="PEM CA certificate(s) the server's must chain to"),
]
# Any text but control characters; it is escaped wherever it goes (filters, DNs).
LdapUid = Annotated[str, Field(min_length=1, max_length=255, pattern=r"^[^\x00-\x1f\x7f]+$")]


def check_server_settings(
    url: str,
    encryption: str,
    username: str | None,
    has_password: bool,
    user_dn_template: str | None,
    search_filter: str | None,
    ca_certificate: str | None,
) -> None:
    """The rules a server's settings obey together; ValueError naming the first one broken. Shared
    by ``AddLdapServer`` and the service, which checks an update merged with what is stored."""
    tls_url = url.lower().startswith("ldaps://")
    if encryption == "TLS" and not tls_url:
        raise ValueError("encryption TLS needs an ldaps:// url")
    if encryption != "TLS" and tls_url:
        raise ValueError(f"an ldaps:// url needs encryption TLS, not {encryption}")
    # A DN with no password is an "unauthenticated bind", which many servers accept as anonymous.
    if username is not None and not has_password:
        raise ValueError("give the service account's password with its username")
    if username is None and has_password:
        raise ValueError("a password needs a username (the service account's DN)")
    if user_dn_template is not None and user_dn_template.count(USERNAME_PLACEHOLDER) != 1:
        raise ValueError(f"userDnTemplate must contain {USERNAME_PLACEHOLDER} exactly once")
    if user_dn_template is not None and search_filter is not None:
        raise ValueError("a filter narrows searches, and a server with a userDnTemplate does not search")
    if ca_certificate is not None and encryption == "None":
        raise ValueError("caCertificate needs encryption TLS or StartTLS")


# ---------------------------------------------------------------- servers


class LdapServerInventory(Inventory):
    url: str
    base: str
    username: str | None = None
    encryption: LdapEncryption
    username_property: str
    filter: str | None = None
    user_dn_template: str | None = None
    timeout: int
    ca_certificate: str | None = None


class LdapServerReply(Reply):
    inventory: LdapServerInventory


class AddLdapServer(CreateMessage):
    """Add a directory; the node first connects, binds as the service account and reads ``base``,
    so a wrong address, credential or base DN is refused here rather than at the first login."""

    service: ClassVar[str] = SERVICE
    admin_only: ClassVar[bool] = True
    reply = LdapServerReply

    name: Name
    description: Description = None
    url: LdapUrl
    base: Dn
    username: Dn | None = None
    password: ServicePassword | None = None
    encryption: LdapEncryption = "None"
    username_property: AttributeName = "uid"
    filter: LdapFilter | None = None
    user_dn_template: UserDnTemplate | None = None
    timeout: Timeout = 5
    ca_certificate: CaCertificate | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        check_server_settings(
            self.url,
            self.encryption,
            self.username,
            self.password is not None,
            self.user_dn_template,
            self.filter,
            self.ca_certificate,
        )
        return self


class UpdateLdapServer(ResourceMessage):
    """Change what is given. An empty string clears ``filter``, ``userDnTemplate`` and
    ``caCertificate``, and ``username`` (which also forgets the password: anonymous searches).
    Connection settings are checked against the directory again before they are stored."""

    service: ClassVar[str] = SERVICE
    admin_only: ClassVar[bool] = True
    reply = LdapServerReply

    name: Name | None = None
    description: Description = None
    url: LdapUrl | None = None
    base: Dn | None = None
    username: Annotated[str, Field(max_length=1024, pattern=r"^(\S(?:.*\S)?)?$")] | None = None
    password: ServicePassword | None = None
    encryption: LdapEncryption | None = None
    username_property: AttributeName | None = None
    filter: Annotated[str, Field(max_length=1024, pattern=r"^(\(.*\))?$")] | None = None
    user_dn_template: Annotated[str, Field(max_length=1024, pattern=r"^(\S(?:.*\S)?)?$")] | None = None
    timeout: Timeout | None = None
    ca_certificate: Annotated[str, Field(max_length=65536)] | None = None


class DeleteLdapServer(DeleteMessage):
    """Permissive refuses while the server has bindings; Enforcing deletes them too, and ends the
    sessions they granted."""

    service: ClassVar[str] = SERVICE
    admin_only: ClassVar[bool] = True
    reply = EmptyReply


class QueryLdapServer(QueryMessage):
    service: ClassVar[str] = SERVICE
    admin_only: ClassVar[bool] = True
    reply = QueryReply


# ---------------------------------------------------------------- bindings


class LdapBindingInventory(WireModel):
    model_config = ConfigDict(from_attributes=True)

    uuid: str
    ldap_server_uuid: str
    ldap_uid: str
    ldap_dn: str
    account_uuid: str
    created_at: datetime


class LdapBindingReply(Reply):
    inventory: LdapBindingInventory


class CreateLdapBinding(CreateMessage):
    """Let the directory entry ``ldapUid`` log in as ``accountUuid``. The entry must exist (the
    node looks it up); an admin account cannot be bound, as ZStack's rule, so the directory can
    never grant admin rights. ``ldapServerUuid`` may be left out while there is one server."""

    service: ClassVar[str] = SERVICE
    admin_only: ClassVar[bool] = True
    reply = LdapBindingReply

    ldap_uid: LdapUid
    account_uuid: Uuid
    ldap_server_uuid: Uuid | None = None


class DeleteLdapBinding(ResourceMessage):
    """Stop the entry logging in as the account, and end the sessions it was granted."""

    service: ClassVar[str] = SERVICE
    admin_only: ClassVar[bool] = True
    reply = EmptyReply


class QueryLdapBinding(QueryMessage):
    service: ClassVar[str] = SERVICE
    admin_only: ClassVar[bool] = True
    reply = QueryReply


# ---------------------------------------------------------------- login


class LogInByLdap(ApiMessage):
    """A session of the account ``uid`` is bound to, once the directory accepts ``password``.
    Without ``ldapServerUuid`` every server is tried, oldest first, until one proves a bound entry."""

    service: ClassVar[str] = SERVICE
    public: ClassVar[bool] = True
    reply = SessionReply

    uid: LdapUid
    # Never empty: a simple bind with a DN and no password is an unauthenticated bind, which
    # servers may answer with success without checking anything.
    password: Annotated[str, Field(min_length=1, max_length=1024)]
    ldap_server_uuid: Uuid | None = None
