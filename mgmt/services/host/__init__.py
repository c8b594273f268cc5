from mgmt.services.host.service import HostService

__all__ = ["HostService"]
