from mgmt.services.vrouter.service import VirtualRouterService

__all__ = ["VirtualRouterService"]
