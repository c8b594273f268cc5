from mgmt.services.management.service import ManagementService

__all__ = ["ManagementService"]
