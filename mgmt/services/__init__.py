"""One package per service, each with its own handlers, errors and (where needed) config.

Services are found through the ``ringstack.services`` entry point group, so a plugin package adds
a service without editing the core.
"""
