"""The declarative base and the columns every resource has."""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import DateTime, Integer, MetaData, String, Text, func
from sqlalchemy.orm import DeclarativeBase, Mapped, declared_attr, mapped_column

# Stable constraint names so Alembic migrations can refer to them.
NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


UUID_LENGTH = 32


class ResourceMixin:
    """uuid, name, description, timestamps, owner and a version for optimistic concurrency.

    ``version`` is SQLAlchemy's version counter: every UPDATE says ``WHERE version = <read>`` and
    bumps it, so a writer holding a stale row fails (StaleDataError -> ``SYS.CONFLICT``) instead of
    overwriting a newer change. Stale owners during a ring change rely on this.
    """

    resource_type: ClassVar[str]

    uuid: Mapped[str] = mapped_column(String(UUID_LENGTH), primary_key=True)
    name: Mapped[str] = mapped_column(String(255), index=True)
    description: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )
    owner_account_uuid: Mapped[str | None] = mapped_column(String(UUID_LENGTH), index=True)
    version: Mapped[int] = mapped_column(Integer, nullable=False, default=1)

    @declared_attr.directive
    def __mapper_args__(cls) -> dict[str, Any]:
        return {"version_id_col": cls.version, "eager_defaults": True}
