from mgmt.services.offering.service import OfferingService

__all__ = ["OfferingService"]
