from mgmt.services.image.service import ImageService

__all__ = ["ImageService"]
