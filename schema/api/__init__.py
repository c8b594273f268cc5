"""API messages of every service. Importing this package registers them all."""

from schema.api import zone

__all__ = ["zone"]
