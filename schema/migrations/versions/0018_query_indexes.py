"""Query index on vm_instance (name, uuid): sortBy=name pages read only the index

``sortBy=name`` orders by ``name, uuid`` (uuid is the tie-break that keeps paging stable).
``ix_vm_instance_name`` gives the name order only: PostgreSQL read the rows up to the page through
it and sorted each group of equal names by uuid (8 ms for ``start=4000`` of 100k VMs). With
``(name, uuid)`` and ``run_query`` paging the uuids first, the page is an index-only scan
(0.7 ms). See bench/README.md (``bench/query.py``).

The model should declare the same (schema/db/vm.py, ``VmInstance.__table_args__``)::

    Index("ix_vm_instance_name_uuid", "name", "uuid"),

Revision ID: 0018
Revises: 0015
"""

from alembic import op

revision = "0018"
down_revision = "0015"  # the integration branch's head; the lead re-chains
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(op.f("ix_vm_instance_name_uuid"), "vm_instance", ["name", "uuid"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_vm_instance_name_uuid"), table_name="vm_instance")
