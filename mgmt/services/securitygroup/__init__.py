"""Security groups: an observer plugin. It watches VM and host events and tells hosts' agents; the
VM service does not know it exists, and ``disabled_services = ["securitygroup"]`` removes it."""

from mgmt.services.securitygroup.service import SecurityGroupService

__all__ = ["SecurityGroupService"]
