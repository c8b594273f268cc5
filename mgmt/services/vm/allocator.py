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

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session

from schema.db.cluster import Cluster
from schema.db.host import Host
from schema.db.network import L2NetworkClusterRef
from schema.db.storage import PrimaryStorage, PrimaryStorageClusterRef


@dataclass(frozen=True)
class HostCandidate:
    uuid: str
    cluster_uuid: str
    available_cpu: int
    available_memory: int
    total_cpu: int
    total_memory: int


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


def candidates(session: Session, demand: Demand, limit: int = 64) -> list[HostCandidate]:
    """Hosts that could take the VM now (capacity is re-checked atomically when reserving)."""
    stmt = (
        select(
            Host.uuid,
            Host.cluster_uuid,
            Host.available_cpu,
            Host.available_memory_size,
            Host.total_cpu,
            Host.total_memory_size,
        )
        .join(Cluster, Cluster.uuid == Host.cluster_uuid)
        .where(
            Host.zone_uuid == demand.zone_uuid,
            Host.state == "Enabled",
            Host.status == "Connected",
            Cluster.state == "Enabled",
            Host.available_cpu >= demand.cpu,
            Host.available_memory_size >= demand.memory,
        )
    )
    if demand.hypervisor_type:
        stmt = stmt.where(Host.hypervisor_type == demand.hypervisor_type)
    if demand.cluster_uuid:
        stmt = stmt.where(Host.cluster_uuid == demand.cluster_uuid)
    if demand.host_uuid:
        stmt = stmt.where(Host.uuid == demand.host_uuid)
    if demand.exclude_hosts:
        stmt = stmt.where(Host.uuid.not_in(demand.exclude_hosts))
    if demand.l2_uuids:
        attached = (
            select(L2NetworkClusterRef.cluster_uuid)
            .where(L2NetworkClusterRef.l2_network_uuid.in_(demand.l2_uuids))
            .group_by(L2NetworkClusterRef.cluster_uuid)
            .having(func.count(func.distinct(L2NetworkClusterRef.l2_network_uuid)) == len(demand.l2_uuids))
        )
        stmt = stmt.where(Host.cluster_uuid.in_(attached))
    with_storage = (
        select(PrimaryStorageClusterRef.cluster_uuid)
        .join(PrimaryStorage, PrimaryStorage.uuid == PrimaryStorageClusterRef.primary_storage_uuid)
        .where(and_(PrimaryStorage.state == "Enabled", PrimaryStorage.available_capacity >= demand.disk))
    )
    stmt = (
        stmt.where(Host.cluster_uuid.in_(with_storage))
        .order_by(Host.available_memory_size.desc())
        .limit(limit)
    )
    return [HostCandidate(*row) for row in session.execute(stmt)]


def primary_storages(
    session: Session, cluster_uuid: str, size: int, wanted: str | None = None
) -> list[tuple[str, str, str]]:
    """(uuid, type, url) of enabled primary storage attached to the cluster with ``size`` free, roomiest first."""
    stmt = (
        select(PrimaryStorage.uuid, PrimaryStorage.type, PrimaryStorage.url)
        .join(PrimaryStorageClusterRef, PrimaryStorageClusterRef.primary_storage_uuid == PrimaryStorage.uuid)
        .where(
            PrimaryStorageClusterRef.cluster_uuid == cluster_uuid,
            PrimaryStorage.state == "Enabled",
            PrimaryStorage.available_capacity >= size,
        )
        .order_by(PrimaryStorage.available_capacity.desc())
    )
    if wanted:
        stmt = stmt.where(PrimaryStorage.uuid == wanted)
    return [(u, t, url) for u, t, url in session.execute(stmt)]
