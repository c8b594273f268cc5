"""API messages of every service, one module per service. Importing this package imports every
module in it, which registers all messages; a new module needs no edit here."""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")
