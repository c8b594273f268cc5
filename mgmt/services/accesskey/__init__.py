from mgmt.services.accesskey.service import AccessKeyService

__all__ = ["AccessKeyService"]
