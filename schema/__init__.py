"""The single source of truth for data: API messages (``schema.api``), database models
(``schema.db``) and their migrations (``schema/migrations``)."""
