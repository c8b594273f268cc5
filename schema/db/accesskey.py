"""Access keys: API clients' broker credentials (mgmt/services/accesskey)."""

from __future__ import annotations

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from schema.db.base import Base, ResourceMixin


class AccessKey(ResourceMixin, Base):
    """An access key of the account ``owner_account_uuid``; its uuid is the access key id, and the
    broker user ``<ns>.key.<uuid>`` carries it. Only a hash of the secret is kept (the broker keeps
    its own); the secret itself is shown once, in the reply to ``CreateAccessKey``."""

    __tablename__ = "access_key"
    resource_type = "access_key"

    # "sha256$<hex>": the secret is 256 random bits, so a fast hash is enough.
    secret_hash: Mapped[str] = mapped_column(String(128))
