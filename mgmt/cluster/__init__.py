"""The management cluster: membership, partition ownership (leases + fencing), durable jobs."""

from mgmt.cluster.runtime import RingRuntime

__all__ = ["RingRuntime"]
