"""The migrations at head create exactly what the models declare, for every table: a model change
without its migration (or the reverse) fails here, not in an operator's upgrade."""

from __future__ import annotations

from mgmt.core import migrate
from schema.db import Base
from tests.support import infra


def test_migrations_at_head_match_every_model():
    name = infra.unique("rs_allmig_")
    url = infra.create_database(name)
    try:
        migrate.upgrade(url)
        assert infra.schema_diffs(url, set(Base.metadata.tables)) == []
    finally:
        infra.drop_database(name)
