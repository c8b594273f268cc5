"""The storage service: primary storage and backup storage (handlers in ``primary``/``backup``)."""

from __future__ import annotations

from mgmt.core.cascade import CascadeRegistry
from mgmt.core.db import Database
from mgmt.core.events import EventPublisher
from mgmt.core.service import Service
from mgmt.services.storage.backup import BACKUP_STORAGE_RULES, BackupStorageHandlers
from mgmt.services.storage.primary import PRIMARY_STORAGE_RULES, PrimaryStorageHandlers

RULES = (*PRIMARY_STORAGE_RULES, *BACKUP_STORAGE_RULES)


class StorageService(PrimaryStorageHandlers, BackupStorageHandlers, Service):
    name = "storage"

    db: Database
    events: EventPublisher
    cascade: CascadeRegistry

    async def start(self) -> None:
        for rule in RULES:
            self.cascade.register(rule)

    async def stop(self) -> None:
        for rule in RULES:
            self.cascade.unregister(rule.kind)
