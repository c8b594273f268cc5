"""Pending clean-ups on hosts (ZStack's garbage collectors): an undo that failed, kept until it is done."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Integer, String, Text, func
from sqlalchemy.orm import Mapped, mapped_column

from schema.db.base import UUID_LENGTH, Base


class GarbageRecord(Base):
    """One agent command that undoes something on a host, still to be sent (every agent command is
    idempotent, so sending it again until it succeeds is safe)."""

    __tablename__ = "garbage"

    uuid: Mapped[str] = mapped_column(String(UUID_LENGTH), primary_key=True)
    # The resource whose operations it must not overtake: retried in that resource's serial lane.
    resource_uuid: Mapped[str] = mapped_column(String(UUID_LENGTH), index=True)
    host_uuid: Mapped[str] = mapped_column(String(UUID_LENGTH), index=True)
    command_name: Mapped[str] = mapped_column(String(128))
    command_body: Mapped[dict[str, Any]] = mapped_column(JSON)
    origin: Mapped[str] = mapped_column(String(255))  # the chain and step whose undo it is
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    last_error: Mapped[str | None] = mapped_column(Text)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )
