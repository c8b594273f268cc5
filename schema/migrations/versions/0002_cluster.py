"""clusters

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "cluster",
        sa.Column("uuid", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("owner_account_uuid", sa.String(length=32), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("zone_uuid", sa.String(length=32), nullable=False),
        sa.Column("hypervisor_type", sa.String(length=32), nullable=False),
        sa.Column("state", sa.String(length=32), nullable=False),
        sa.ForeignKeyConstraint(["zone_uuid"], ["zone.uuid"], name=op.f("fk_cluster_zone_uuid_zone")),
        sa.PrimaryKeyConstraint("uuid", name=op.f("pk_cluster")),
    )
    op.create_index(op.f("ix_cluster_name"), "cluster", ["name"], unique=False)
    op.create_index(op.f("ix_cluster_owner_account_uuid"), "cluster", ["owner_account_uuid"], unique=False)
    op.create_index(op.f("ix_cluster_zone_uuid"), "cluster", ["zone_uuid"], unique=False)


def downgrade() -> None:
    op.drop_table("cluster")
