"""garbage (pending clean-ups on hosts, retried until done)

Revision ID: 0013
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0009"
branch_labels = None
depends_on = None


def _timestamp(name: str) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False)


def upgrade() -> None:
    op.create_table(
        "garbage",
        sa.Column("uuid", sa.String(length=32), nullable=False),
        sa.Column("resource_uuid", sa.String(length=32), nullable=False),
        sa.Column("host_uuid", sa.String(length=32), nullable=False),
        sa.Column("command_name", sa.String(length=128), nullable=False),
        sa.Column("command_body", sa.JSON(), nullable=False),
        sa.Column("origin", sa.String(length=255), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        _timestamp("created_at"),
        _timestamp("updated_at"),
        sa.PrimaryKeyConstraint("uuid", name=op.f("pk_garbage")),
    )
    op.create_index(op.f("ix_garbage_resource_uuid"), "garbage", ["resource_uuid"], unique=False)
    op.create_index(op.f("ix_garbage_host_uuid"), "garbage", ["host_uuid"], unique=False)
    op.create_index(op.f("ix_garbage_next_attempt_at"), "garbage", ["next_attempt_at"], unique=False)


def downgrade() -> None:
    op.drop_table("garbage")
