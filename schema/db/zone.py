from __future__ import annotations

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from schema.db.base import Base, ResourceMixin


class Zone(ResourceMixin, Base):
    __tablename__ = "zone"
    resource_type = "zone"

    state: Mapped[str] = mapped_column(String(32), default="Enabled")
