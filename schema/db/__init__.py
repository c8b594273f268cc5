"""SQLAlchemy models, one module per service. Importing this package imports every module in it,
so ``Base.metadata`` knows every table; a new module needs no edit here."""

import importlib
import pkgutil

from schema.db.base import Base, ResourceMixin

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["Base", "ResourceMixin"]
