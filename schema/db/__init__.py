"""SQLAlchemy 2 models. Importing this package registers every table on ``Base.metadata``."""

from schema.db.base import Base, ResourceMixin
from schema.db.cluster import Cluster
from schema.db.zone import Zone

__all__ = ["Base", "Cluster", "ResourceMixin", "Zone"]
