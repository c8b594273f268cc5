"""Elastic IPs (ZStack's ``Eip``): a VIP mapped onto a VM NIC, realised by the provider of the
NIC's L3 through ``mgmt.services.eip.backends.EipBackend``."""

from mgmt.services.eip.service import EipService

__all__ = ["EipService"]
