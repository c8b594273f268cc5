"""access keys (API clients' broker credentials)

Revision ID: 0017
Revises: 0016
"""

import sqlalchemy as sa
from alembic import op

from mgmt.core import resourceindex

revision = "0017"
down_revision = "0016"  # chain: 0009, 0013, 0011, 0012, 0014, 0016, 0017
branch_labels = None
depends_on = None


def _timestamp(name: str) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False)


def upgrade() -> None:
    op.create_table(
        "access_key",
        sa.Column("uuid", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        _timestamp("created_at"),
        _timestamp("updated_at"),
        sa.Column("owner_account_uuid", sa.String(length=32), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("secret_hash", sa.String(length=128), nullable=False),
        sa.PrimaryKeyConstraint("uuid", name=op.f("pk_access_key")),
    )
    op.create_index(op.f("ix_access_key_name"), "access_key", ["name"], unique=False)
    op.create_index(
        op.f("ix_access_key_owner_account_uuid"), "access_key", ["owner_account_uuid"], unique=False
    )
    resourceindex.index_table(op.get_bind(), "access_key")  # one uuid namespace (0014)


def downgrade() -> None:
    op.drop_table("access_key")
