from mgmt.services.identity.service import IdentityService

__all__ = ["IdentityService"]
