"""Identity: accounts, sessions (login/logout), resource sharing and quotas. ZStack's API names."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, ClassVar, Literal, Self

from pydantic import ConfigDict, Field, model_validator

from schema.api.base import (
    ApiMessage,
    CreateMessage,
    DeleteMessage,
    Description,
    EmptyReply,
    Inventory,
    QueryMessage,
    QueryReply,
    Reply,
    ResourceMessage,
    Uuid,
    WireModel,
)

AccountType = Literal["Admin", "Normal"]
# No leading or trailing blanks: "admin " must not pass for (or squat on) "admin".
AccountName = Annotated[str, Field(min_length=1, max_length=255, pattern=r"^\S(?:.*\S)?$")]
# A new password; logins accept any length so a short guess fails like any wrong one.
NewPassword = Annotated[str, Field(min_length=8, max_length=255)]
UuidList = Annotated[list[Uuid], Field(min_length=1, max_length=1000)]
QuotaName = Annotated[
    str, Field(min_length=1, max_length=255, pattern=r"^[A-Za-z][A-Za-z0-9]*(\.[A-Za-z0-9]+)*$")
]

SERVICE = "identity"

# ---------------------------------------------------------------- accounts


class AccountInventory(Inventory):
    type: AccountType


class AccountReply(Reply):
    inventory: AccountInventory


class CreateAccount(CreateMessage):
    service: ClassVar[str] = SERVICE
    admin_only: ClassVar[bool] = True
    reply = AccountReply

    name: AccountName
    password: NewPassword
    type: AccountType = "Normal"
    description: Description = None


class UpdateAccount(ResourceMessage):
    """Admins update any account; a normal account only its own name, password and description."""

    service: ClassVar[str] = SERVICE
    reply = AccountReply

    name: AccountName | None = None
    password: NewPassword | None = None
    description: Description = None


class DeleteAccount(DeleteMessage):
    """Refused while the account owns resources (see the identity service for both modes)."""

    service: ClassVar[str] = SERVICE
    admin_only: ClassVar[bool] = True
    reply = EmptyReply


class QueryAccount(QueryMessage):
    service: ClassVar[str] = SERVICE
    reply = QueryReply


# ---------------------------------------------------------------- sessions


class SessionInventory(WireModel):
    model_config = ConfigDict(from_attributes=True)

    uuid: str
    account_uuid: str
    expired_date: datetime
    created_at: datetime


class SessionReply(Reply):
    inventory: SessionInventory


class LogInByAccount(ApiMessage):
    service: ClassVar[str] = SERVICE
    public: ClassVar[bool] = True
    reply = SessionReply

    account_name: Annotated[str, Field(min_length=1, max_length=255)]
    password: Annotated[str, Field(min_length=1, max_length=255)]


class LogOut(ApiMessage):
    """Public, as ZStack's: holding the session uuid is all the proof needed to end it."""

    service: ClassVar[str] = SERVICE
    public: ClassVar[bool] = True
    reply = EmptyReply

    session_uuid: Uuid


class ValidateSessionReply(Reply):
    valid_session: bool


class ValidateSession(ApiMessage):
    service: ClassVar[str] = SERVICE
    public: ClassVar[bool] = True
    mutating: ClassVar[bool] = False
    reply = ValidateSessionReply

    session_uuid: Uuid


# ---------------------------------------------------------------- sharing


class ShareResource(ApiMessage):
    """Share resources read/use-only with accounts, or with every account (``toPublic``)."""

    service: ClassVar[str] = SERVICE
    reply = EmptyReply

    resource_uuids: UuidList
    account_uuids: Annotated[list[Uuid], Field(max_length=1000)] | None = None
    to_public: bool = False

    @model_validator(mode="after")
    def _has_a_receiver(self) -> Self:
        if not self.account_uuids and not self.to_public:
            raise ValueError("give accountUuids or toPublic=true")
        return self


class RevokeResourceSharing(ApiMessage):
    """Undo sharing with the given accounts, the public sharing, or ``all`` of it."""

    service: ClassVar[str] = SERVICE
    reply = EmptyReply

    resource_uuids: UuidList
    account_uuids: Annotated[list[Uuid], Field(max_length=1000)] | None = None
    to_public: bool = False
    all: bool = False

    @model_validator(mode="after")
    def _has_a_target(self) -> Self:
        if not self.account_uuids and not self.to_public and not self.all:
            raise ValueError("give accountUuids, toPublic=true or all=true")
        return self


# ---------------------------------------------------------------- quotas


class QuotaInventory(WireModel):
    """An account's effective limit for one quota: its override, or else the default."""

    model_config = ConfigDict(from_attributes=True)

    uuid: str
    name: str
    identity_uuid: str
    identity_type: Literal["Account"] = "Account"
    value: int


class QuotaReply(Reply):
    inventory: QuotaInventory


class QueryQuota(QueryMessage):
    service: ClassVar[str] = SERVICE
    reply = QueryReply


class UpdateQuota(ApiMessage):
    service: ClassVar[str] = SERVICE
    admin_only: ClassVar[bool] = True
    resource_field: ClassVar[str | None] = "identity_uuid"
    reply = QuotaReply

    identity_uuid: Uuid
    name: QuotaName
    value: Annotated[int, Field(ge=0, le=(1 << 63) - 1)]
