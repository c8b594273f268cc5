"""Access keys: the broker credentials of API clients (CLI, SDK, programs).

An access key is a RabbitMQ user of its own that may send API requests, read its own replies and
read its own account's events, and nothing else (``mgmt.core.brokeradmin.client_permissions``).
The secret is in ``CreateAccessKey``'s reply only: it is never stored in clear, in a job, an
event or a query.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from schema.api.base import (
    UUID_PATTERN,
    ApiMessage,
    DeleteMessage,
    Description,
    EmptyReply,
    Inventory,
    Name,
    QueryMessage,
    QueryReply,
    Reply,
)

SERVICE = "accesskey"


class AccessKeyInventory(Inventory):
    """``uuid`` is the access key id."""

    owner_account_uuid: str


class AccessKeyReply(Reply):
    inventory: AccessKeyInventory


class AccessKeyCreatedReply(Reply):
    inventory: AccessKeyInventory
    access_key_id: str
    access_key_secret: str = Field(description="shown this once: the broker password of brokerUsername")
    broker_username: str = Field(description="<namespace>.key.<accessKeyId>")


class CreateAccessKey(ApiMessage):
    """A new access key for the caller's account (an admin may name another account). Not a job:
    its reply carries the secret, which must not be kept anywhere."""

    service: ClassVar[str] = SERVICE
    reply = AccessKeyCreatedReply

    name: Name
    description: Description = None
    account_uuid: str | None = Field(default=None, pattern=UUID_PATTERN)


class DeleteAccessKey(DeleteMessage):
    """Delete the key and its broker user (its connections are closed by the broker)."""

    service: ClassVar[str] = SERVICE
    reply = EmptyReply


class QueryAccessKey(QueryMessage):
    service: ClassVar[str] = SERVICE
    reply = QueryReply
