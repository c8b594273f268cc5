"""Per-account quotas: the small API services call inside their own transaction.

    # at import or start, by the service that owns the resource counted:
    register_usage("vm.num", lambda session, account_uuid: <count of the account's VMs>)

    # in the transaction that allocates, before inserting:
    check_quota(session, ctx.account, "vm.num", 1)

A quota's limit is the account's override (``UpdateQuota``, table ``quota``) or else its default:
the built-in one below, replaced by the node config's ``quota_defaults``. Admin accounts have no
quotas. ``check_quota`` takes a per-account advisory transaction lock first, so two concurrent
allocations for one account run their check-then-insert one after the other: the second counts
the first's rows (READ COMMITTED sees what committed before its statement) and the limit holds.
The lock is held until the caller's transaction ends, so check as late as possible in it.

Names follow ZStack's (``vm.num``, ``vm.cpuNum``, ``vm.memorySize``, ...). A plugin adds its own
quota with ``define_quota``. The registries are per process: every node in a process shares them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from bus.errors import RingstackError
from mgmt.core.service import Account

QUOTA_EXCEEDED: Final = "IDENTITY.QUOTA_EXCEEDED"

UsageFn = Callable[[Session, str], int]

# The first key of the two-key advisory lock: "QUOT", so quota locks never collide with other
# users of pg_advisory_xact_lock(int, int) that pick their own first key.
_LOCK_SPACE: Final = 0x51554F54


@dataclass(frozen=True, slots=True)
class QuotaDefinition:
    name: str
    default: int
    description: str = ""


_definitions: dict[str, QuotaDefinition] = {}
_usage: dict[str, UsageFn] = {}
_configured: dict[str, int] = {}


def define_quota(name: str, default: int, description: str = "") -> None:
    """Declare a quota; defining the same name again replaces its built-in default."""
    if default < 0:
        raise ValueError(f"quota {name}: the default must be >= 0")
    _definitions[name] = QuotaDefinition(name, default, description)


for _name, _default, _description in (
    ("vm.num", 20, "VM instances"),
    ("vm.cpuNum", 80, "virtual CPUs over all VMs"),
    ("vm.memorySize", 80 << 30, "memory over all VMs, bytes"),
    ("volume.num", 40, "volumes"),
    ("l3.ipNum", 100, "IP addresses allocated on L3 networks"),
):
    define_quota(_name, _default, _description)


def quota_names() -> list[str]:
    return sorted(_definitions)


def is_defined(name: str) -> bool:
    return name in _definitions


def configure_defaults(defaults: Mapping[str, int]) -> None:
    """Set the node config's defaults (``quota_defaults``), replacing any set before."""
    unknown = sorted(set(defaults) - set(_definitions))
    if unknown:
        raise ValueError(f"quota_defaults names unknown quotas {unknown}; known: {quota_names()}")
    negative = sorted(name for name, value in defaults.items() if value < 0)
    if negative:
        raise ValueError(f"quota_defaults must be >= 0: {negative}")
    _configured.clear()
    _configured.update(defaults)


def default_limit(name: str) -> int:
    if name not in _definitions:
        raise KeyError(f"no quota named {name!r}")
    return _configured.get(name, _definitions[name].default)


def default_limits() -> dict[str, int]:
    return {name: default_limit(name) for name in _definitions}


def register_usage(name: str, fn: UsageFn) -> None:
    """Say how to count ``name``'s current usage: ``fn(session, account_uuid) -> int``.
    Registering again replaces the function (every node of a process registers the same one)."""
    if name not in _definitions:
        raise KeyError(f"no quota named {name!r}; define_quota it first")
    _usage[name] = fn


def count_owned(name: str, default: int, description: str, model: type) -> None:
    """A quota on how many rows of ``model`` an account owns: define it and count it in one go."""
    define_quota(name, default, description)
    owner = model.owner_account_uuid  # type: ignore[attr-defined]
    register_usage(
        name,
        lambda session, account_uuid: (
            session.scalar(select(func.count()).select_from(model).where(owner == account_uuid)) or 0
        ),
    )


def limit_for(session: Session, account_uuid: str, name: str) -> int:
    from schema.db.identity import Quota  # the identity service's table

    override = session.scalar(
        select(Quota.value).where(Quota.identity_uuid == account_uuid, Quota.name == name)
    )
    return default_limit(name) if override is None else int(override)


def usage_of(session: Session, account_uuid: str, name: str) -> int:
    fn = _usage.get(name)
    if fn is None:
        raise KeyError(f"quota {name!r} has no usage function; register_usage it")
    return int(fn(session, account_uuid))


def lock_account(session: Session, account_uuid: str) -> None:
    """Serialise quota checks of one account until the current transaction ends."""
    session.execute(
        select(func.pg_advisory_xact_lock(_LOCK_SPACE, func.hashtext(account_uuid))).execution_options(
            autoflush=False
        )
    )


def check_quota(session: Session, account: Account, name: str, requested: int) -> None:
    """Raise ``IDENTITY.QUOTA_EXCEEDED`` unless ``account`` may allocate ``requested`` more of
    ``name``. Call it in the transaction that then makes the allocation."""
    if requested < 0:
        raise ValueError("requested must be >= 0")
    if account.is_admin:
        return
    default_limit(name)  # an unknown name fails (KeyError) before the lock is taken
    lock_account(session, account.uuid)
    limit = limit_for(session, account.uuid, name)
    used = usage_of(session, account.uuid, name)
    if used + requested > limit:
        raise RingstackError(
            QUOTA_EXCEEDED,
            f"quota {name} of account {account.name} exceeded: {used} used + {requested} requested > {limit}",
            details={"quota": name, "limit": limit, "used": used, "requested": requested},
        )


__all__ = [
    "QUOTA_EXCEEDED",
    "QuotaDefinition",
    "check_quota",
    "configure_defaults",
    "default_limit",
    "default_limits",
    "define_quota",
    "is_defined",
    "limit_for",
    "lock_account",
    "quota_names",
    "register_usage",
    "usage_of",
]
