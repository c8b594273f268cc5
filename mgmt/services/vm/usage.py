"""What a VM's owner uses, counted for quotas (registered by the VM service)."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from schema.db.vm import VmInstance, Volume


def usage_vms(session: Session, account_uuid: str) -> int:
    return int(session.scalar(select(func.count()).where(VmInstance.owner_account_uuid == account_uuid)) or 0)


def usage_cpu(session: Session, account_uuid: str) -> int:
    return int(
        session.scalar(
            select(func.coalesce(func.sum(VmInstance.cpu_num), 0)).where(
                VmInstance.owner_account_uuid == account_uuid
            )
        )
        or 0
    )


def usage_memory(session: Session, account_uuid: str) -> int:
    return int(
        session.scalar(
            select(func.coalesce(func.sum(VmInstance.memory_size), 0)).where(
                VmInstance.owner_account_uuid == account_uuid
            )
        )
        or 0
    )


def usage_volumes(session: Session, account_uuid: str) -> int:
    return int(session.scalar(select(func.count()).where(Volume.owner_account_uuid == account_uuid)) or 0)
