"""Choosing a host for a VM: the candidates, and strategies that order them.

A candidate host is enabled and connected, in the requested zone / cluster / host, of the right
hypervisor, in a cluster attached to every L2 network behind the VM's L3 networks and to an
enabled primary storage with room for the VM's disks, and has the CPU and memory free. The
strategy orders the candidates; the caller then reserves on them in turn (a conditional UPDATE,
so two concurrent creates can never over-commit one host) until one reservation holds.

Strategies are pluggable (``register_strategy``). The default, ``LeastUsedSpread``, prefers the
hosts with the most free memory but picks among the best few at random, so that many creates at
once spread out instead of all racing for the single emptiest host.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import TextClause, text
from sqlalchemy.orm import Session


@dataclass(frozen=True)
class HostCandidate:
    uuid: str
    cluster_uuid: str
    available_cpu: int
    available_memory: int
    total_cpu: int
    total_memory: int
    hypervisor_type: str | None = None  # the cluster's


@dataclass(frozen=True)
class Demand:
    zone_uuid: str
    cpu: int
    memory: int
    disk: int
    l2_uuids: frozenset[str]
    hypervisor_type: str | None = None
    cluster_uuid: str | None = None
    host_uuid: str | None = None
    exclude_hosts: frozenset[str] = frozenset()


class AllocatorStrategy(Protocol):
    name: str

    def order(self, candidates: Sequence[HostCandidate]) -> list[HostCandidate]: ...


class LeastUsedSpread:
    name = "LeastUsedSpread"

    def __init__(self, spread: int = 8) -> None:
        self.spread = spread

    def order(self, candidates: Sequence[HostCandidate]) -> list[HostCandidate]:
        ranked = sorted(candidates, key=lambda h: (h.available_memory, h.available_cpu), reverse=True)
        head, tail = ranked[: self.spread], ranked[self.spread :]
        random.shuffle(head)
        return head + tail


class FirstAvailable:
    name = "FirstAvailable"

    def order(self, candidates: Sequence[HostCandidate]) -> list[HostCandidate]:
        return sorted(candidates, key=lambda h: h.uuid)


class RandomHost:
    name = "Random"

    def order(self, candidates: Sequence[HostCandidate]) -> list[HostCandidate]:
        shuffled = list(candidates)
        random.shuffle(shuffled)
        return shuffled


_STRATEGIES: dict[str, AllocatorStrategy] = {
    s.name: s for s in (LeastUsedSpread(), FirstAvailable(), RandomHost())
}
DEFAULT_STRATEGY = LeastUsedSpread.name


def register_strategy(strategy: AllocatorStrategy) -> None:
    _STRATEGIES[strategy.name] = strategy


def strategy(name: str | None) -> AllocatorStrategy:
    return _STRATEGIES.get(name or DEFAULT_STRATEGY) or _STRATEGIES[DEFAULT_STRATEGY]


# The allocator's queries are hand-written SQL, one statement per combination of filters, built
# once: a VM create runs them in its reserve transaction, and building and compiling the
# equivalent ORM statements took more of the node's CPU than the database took to run them.
_CANDIDATES_SQL = """
SELECT h.uuid, h.cluster_uuid, h.available_cpu, h.available_memory_size, h.total_cpu,
       h.total_memory_size, c.hypervisor_type
FROM host h JOIN cluster c ON c.uuid = h.cluster_uuid
WHERE h.zone_uuid = :zone AND h.state = 'Enabled' AND h.status = 'Connected' AND c.state = 'Enabled'
  AND h.available_cpu >= :cpu AND h.available_memory_size >= :memory
  AND h.cluster_uuid IN (
      SELECT r.cluster_uuid FROM primary_storage_cluster_ref r
      JOIN primary_storage ps ON ps.uuid = r.primary_storage_uuid
      WHERE ps.state = 'Enabled' AND ps.available_capacity >= :disk)
  {filters}
ORDER BY h.available_memory_size DESC
LIMIT :limit
"""
_FILTERS = {
    "hypervisor": "AND h.hypervisor_type = :hypervisor",
    "cluster": "AND h.cluster_uuid = :cluster",
    "host": "AND h.uuid = :host",
    "exclude": "AND NOT (h.uuid = ANY(:exclude))",
    "l2s": """AND h.cluster_uuid IN (
      SELECT l.cluster_uuid FROM l2_network_cluster_ref l WHERE l.l2_network_uuid = ANY(:l2s)
      GROUP BY l.cluster_uuid HAVING count(DISTINCT l.l2_network_uuid) = :l2_count)""",
}


@functools.cache
def _candidates_sql(filters: tuple[str, ...]) -> TextClause:
    return text(_CANDIDATES_SQL.format(filters="\n  ".join(_FILTERS[f] for f in filters)))


def candidates(session: Session, demand: Demand, limit: int = 64) -> list[HostCandidate]:
    """Hosts that could take the VM now (capacity is re-checked atomically when reserving)."""
    params: dict[str, object] = {
        "zone": demand.zone_uuid,
        "cpu": demand.cpu,
        "memory": demand.memory,
        "disk": demand.disk,
        "limit": limit,
        "hypervisor": demand.hypervisor_type,
        "cluster": demand.cluster_uuid,
        "host": demand.host_uuid,
        "exclude": sorted(demand.exclude_hosts),
        "l2s": sorted(demand.l2_uuids),
        "l2_count": len(demand.l2_uuids),
    }
    filters = tuple(f for f in ("hypervisor", "cluster", "host", "exclude", "l2s") if params[f])
    rows = session.execute(_candidates_sql(filters), params)
    return [HostCandidate(*row) for row in rows]


_STORAGES_SQL = """
SELECT ps.uuid, ps.type, ps.url
FROM primary_storage ps JOIN primary_storage_cluster_ref r ON r.primary_storage_uuid = ps.uuid
WHERE r.cluster_uuid = :cluster AND ps.state = 'Enabled' AND ps.available_capacity >= :size {wanted}
ORDER BY ps.available_capacity DESC
"""
_STORAGES = text(_STORAGES_SQL.format(wanted=""))
_STORAGE_WANTED = text(_STORAGES_SQL.format(wanted="AND ps.uuid = :wanted"))


def primary_storages(
    session: Session, cluster_uuid: str, size: int, wanted: str | None = None
) -> list[tuple[str, str, str]]:
    """(uuid, type, url) of enabled primary storage attached to the cluster with ``size`` free, roomiest first."""
    stmt = _STORAGE_WANTED if wanted else _STORAGES
    rows = session.execute(stmt, {"cluster": cluster_uuid, "size": size, "wanted": wanted})
    return [(u, t, url) for u, t, url in rows]
