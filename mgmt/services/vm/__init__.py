from mgmt.services.vm.service import VmService

__all__ = ["VmService"]
