"""resource index (one uuid namespace across every kind; ownership and sharing by kind and uuid)

Revision ID: 0014
Revises: 0012
"""

import sqlalchemy as sa
from alembic import op

from mgmt.core import resourceindex

revision = "0014"
down_revision = "0012"  # main's head (chain: 0009, 0013, 0011, 0012)
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "resource",
        sa.Column("uuid", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("owner_account_uuid", sa.String(length=32), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("uuid", name=op.f("pk_resource")),
    )
    op.create_index(op.f("ix_resource_owner_account_uuid"), "resource", ["owner_account_uuid"], unique=False)
    # Sharing is keyed by (kind, uuid) now; visibility looks rows up by both.
    op.create_index(
        op.f("ix_shared_resource_resource_type_resource_uuid"),
        "shared_resource",
        ["resource_type", "resource_uuid"],
        unique=False,
    )
    conn = op.get_bind()
    conn.execute(sa.text(resourceindex.FUNCTION_SQL))
    for table in resourceindex.resource_tables(conn):
        resourceindex.index_table(conn, table)


def downgrade() -> None:
    conn = op.get_bind()
    for table in resourceindex.indexed_tables(conn):
        conn.execute(sa.text(f'DROP TRIGGER IF EXISTS {resourceindex.TRIGGER_NAME} ON "{table}"'))
    conn.execute(sa.text(f"DROP FUNCTION IF EXISTS {resourceindex.FUNCTION_NAME}()"))
    op.drop_index(op.f("ix_shared_resource_resource_type_resource_uuid"), table_name="shared_resource")
    op.drop_index(op.f("ix_resource_owner_account_uuid"), table_name="resource")
    op.drop_table("resource")
