from mgmt.services.garbage.service import GarbageService

__all__ = ["GarbageService"]
