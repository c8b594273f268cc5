from mgmt.services.zone.service import ZoneService

__all__ = ["ZoneService"]
