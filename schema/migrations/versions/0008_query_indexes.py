"""Query indexes on vm_instance: created_at (sortBy=createdAt) and name for LIKE prefixes

``sortBy=createdAt`` with ``limit=50`` sorted every matching VM (an 80-90 ms top-N sort at 100k
rows); with an index on created_at it reads the first 50 in order (under 1 ms). ``name~=web-1%``
could not use ix_vm_instance_name: PostgreSQL uses a plain btree for a LIKE prefix only under the
C collation (not C.UTF-8 nor en_US.UTF-8), so counting ``state=Running name~=web-1%`` read every
Running VM (about 25 ms); the varchar_pattern_ops index makes the prefix a range scan (under 2 ms).
See bench/README.md (``bench/query.py``).

The model declares the same (schema/db/vm.py, ``VmInstance.__table_args__``)::

    Index("ix_vm_instance_created_at", "created_at"),
    Index("ix_vm_instance_name_pattern", "name", postgresql_ops={"name": "varchar_pattern_ops"}),

Revision ID: 0008
Revises: 0007
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(op.f("ix_vm_instance_created_at"), "vm_instance", ["created_at"], unique=False)
    op.create_index(
        op.f("ix_vm_instance_name_pattern"),
        "vm_instance",
        ["name"],
        unique=False,
        postgresql_ops={"name": "varchar_pattern_ops"},
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_vm_instance_name_pattern"), table_name="vm_instance")
    op.drop_index(op.f("ix_vm_instance_created_at"), table_name="vm_instance")
