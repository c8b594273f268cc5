from mgmt.services.storage.service import StorageService

__all__ = ["StorageService"]
