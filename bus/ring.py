"""The consistent hash ring: which management node owns which resource.

Resources hash into a fixed number of *partitions* (every node must use the same number; it is
stored in the database); partitions are placed on the ring of member node uuids with many virtual
nodes each (uhashring, md5-based, so every process computes the same ring from the same members).
Ownership moves a partition at a time, which is what lets a node hold a lease per partition
instead of per resource. A ``Ring`` is immutable and tagged with the membership ``epoch`` it was
built for: same epoch, same members, same ring on every node.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field

from uhashring import HashRing

DEFAULT_PARTITIONS = 256
DEFAULT_VNODES = 160


def partition_of(key: str, partitions: int) -> int:
    """The partition a resource uuid falls in; stable across processes and Python versions."""
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % partitions


@dataclass(frozen=True)
class Ring:
    epoch: int
    members: tuple[str, ...]
    partitions: int = DEFAULT_PARTITIONS
    vnodes: int = DEFAULT_VNODES
    _owners: tuple[str | None, ...] = field(default=(), repr=False, compare=False)

    @classmethod
    def build(
        cls,
        epoch: int,
        members: Iterable[str],
        partitions: int = DEFAULT_PARTITIONS,
        vnodes: int = DEFAULT_VNODES,
    ) -> Ring:
        ordered = tuple(sorted(set(members)))
        if ordered:
            hash_ring = HashRing(nodes=list(ordered), vnodes=vnodes)
            owners: tuple[str | None, ...] = tuple(
                hash_ring.get_node(f"partition-{p}") for p in range(partitions)
            )
        else:
            owners = (None,) * partitions
        return cls(epoch, ordered, partitions, vnodes, owners)

    def partition(self, resource_uuid: str) -> int:
        return partition_of(resource_uuid, self.partitions)

    def owner_of_partition(self, partition: int) -> str | None:
        return self._owners[partition]

    def owner(self, resource_uuid: str) -> str | None:
        """The node that owns ``resource_uuid``; None while the ring has no members."""
        return self._owners[self.partition(resource_uuid)]

    def partitions_of(self, node_uuid: str) -> frozenset[int]:
        return frozenset(p for p, owner in enumerate(self._owners) if owner == node_uuid)
