from mgmt.services.cluster.service import ClusterService

__all__ = ["ClusterService"]
