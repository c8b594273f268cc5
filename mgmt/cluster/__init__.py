"""The management cluster: membership, partition ownership (leases + fencing), durable jobs."""

from mgmt.cluster.manager import Cluster

__all__ = ["Cluster"]
