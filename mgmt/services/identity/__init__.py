from mgmt.services.identity.ldap import LdapService
from mgmt.services.identity.service import IdentityService

__all__ = ["IdentityService", "LdapService"]
