"""Identity: accounts, their sessions, per-account quota overrides, and resource sharing."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    String,
    UniqueConstraint,
    func,
)
from sqlalchemy.orm import Mapped, mapped_column

from schema.db.base import UUID_LENGTH, Base, ResourceMixin

ACCOUNT_TYPES = ("Admin", "Normal")


class Account(ResourceMixin, Base):
    """An account; ``owner_account_uuid`` is the account itself, so the generic visibility rule
    (owner sees its rows) lets a normal account see exactly its own account."""

    __tablename__ = "account"
    resource_type = "account"

    # Overrides the mixin's indexed name: account names are unique (the unique constraint is the
    # index), which is also what makes the bootstrap admin's insert race-free across nodes.
    name: Mapped[str] = mapped_column(String(255), unique=True)
    type: Mapped[str] = mapped_column(String(32), index=True)  # Admin | Normal (admins are counted)
    # "scrypt$ln=..,r=..,p=..$<salt>$<key>" (see mgmt/services/identity/passwords.py); never shown.
    password_hash: Mapped[str] = mapped_column(String(255))


class AccountSession(Base):
    """A login session: its uuid is the bearer credential every API call carries."""

    __tablename__ = "account_session"

    uuid: Mapped[str] = mapped_column(String(UUID_LENGTH), primary_key=True)
    account_uuid: Mapped[str] = mapped_column(
        String(UUID_LENGTH), ForeignKey("account.uuid", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    # Indexed: expired sessions are swept by date.
    expired_date: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class Quota(Base):
    """A per-account override of a quota's default limit (defaults come from the node config)."""

    __tablename__ = "quota"
    __table_args__ = (UniqueConstraint("identity_uuid", "name"),)

    # md5(identity_uuid || name): the same uuid the effective-quota view shows for the pair, so
    # an override and the default it replaces are one resource to clients.
    uuid: Mapped[str] = mapped_column(String(UUID_LENGTH), primary_key=True)
    # No separate index: the unique constraint's index leads with identity_uuid.
    identity_uuid: Mapped[str] = mapped_column(
        String(UUID_LENGTH), ForeignKey("account.uuid", ondelete="CASCADE")
    )
    name: Mapped[str] = mapped_column(String(255))
    value: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


class SharedResource(Base):
    """A resource shared read/use-only with one account (``receiver_account_uuid``) or with every
    account (``to_public``, receiver NULL). ``mgmt.core.access`` consults it for visibility."""

    __tablename__ = "shared_resource"
    __table_args__ = (
        # NULLS NOT DISTINCT: at most one public row per resource, one row per (resource, receiver).
        UniqueConstraint("resource_uuid", "receiver_account_uuid", postgresql_nulls_not_distinct=True),
        CheckConstraint(
            "(to_public AND receiver_account_uuid IS NULL) OR "
            "(NOT to_public AND receiver_account_uuid IS NOT NULL)",
            name="target",
        ),
        # Visibility looks sharing up by (kind, uuid): one uuid is one resource of one kind.
        Index("ix_shared_resource_resource_type_resource_uuid", "resource_type", "resource_uuid"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    resource_uuid: Mapped[str] = mapped_column(String(UUID_LENGTH))  # the unique index leads with it
    resource_type: Mapped[str] = mapped_column(String(64))
    owner_account_uuid: Mapped[str] = mapped_column(String(UUID_LENGTH), index=True)
    receiver_account_uuid: Mapped[str | None] = mapped_column(
        String(UUID_LENGTH), ForeignKey("account.uuid", ondelete="CASCADE"), index=True
    )
    to_public: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class ResourceIndex(Base):
    """One row per resource of any kind: the single uuid namespace (ZStack's ResourceVO).

    Filled by PostgreSQL triggers on every table with a ``uuid`` and an ``owner_account_uuid``
    (see ``mgmt.core.resourceindex``), so raw SQL inserts are covered as ORM ones are, and a uuid
    taken by any kind refuses the insert of another (``SYS.CONFLICT``). A deleted resource leaves
    a tombstone (``deleted_at``): its uuid stays its owner's, so another account can neither take
    it nor learn from a create whether the resource still exists (see ``resourceindex``).
    """

    __tablename__ = "resource"

    uuid: Mapped[str] = mapped_column(String(UUID_LENGTH), primary_key=True)
    kind: Mapped[str] = mapped_column(String(64))  # the table's name
    owner_account_uuid: Mapped[str | None] = mapped_column(String(UUID_LENGTH), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
