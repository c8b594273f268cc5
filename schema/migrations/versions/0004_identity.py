"""identity (accounts, sessions, quotas, sharing)

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def _timestamp(name: str) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False)


def upgrade() -> None:
    op.create_table(
        "account",
        sa.Column("uuid", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        _timestamp("created_at"),
        _timestamp("updated_at"),
        sa.Column("owner_account_uuid", sa.String(length=32), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("type", sa.String(length=32), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=False),
        sa.PrimaryKeyConstraint("uuid", name=op.f("pk_account")),
        sa.UniqueConstraint("name", name=op.f("uq_account_name")),
    )
    op.create_index(op.f("ix_account_owner_account_uuid"), "account", ["owner_account_uuid"], unique=False)
    op.create_index(op.f("ix_account_type"), "account", ["type"], unique=False)

    op.create_table(
        "account_session",
        sa.Column("uuid", sa.String(length=32), nullable=False),
        sa.Column("account_uuid", sa.String(length=32), nullable=False),
        _timestamp("created_at"),
        sa.Column("expired_date", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_uuid"],
            ["account.uuid"],
            name=op.f("fk_account_session_account_uuid_account"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("uuid", name=op.f("pk_account_session")),
    )
    op.create_index(
        op.f("ix_account_session_account_uuid"), "account_session", ["account_uuid"], unique=False
    )
    op.create_index(
        op.f("ix_account_session_expired_date"), "account_session", ["expired_date"], unique=False
    )

    op.create_table(
        "quota",
        sa.Column("uuid", sa.String(length=32), nullable=False),
        sa.Column("identity_uuid", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        _timestamp("created_at"),
        _timestamp("updated_at"),
        sa.ForeignKeyConstraint(
            ["identity_uuid"], ["account.uuid"], name=op.f("fk_quota_identity_uuid_account"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("uuid", name=op.f("pk_quota")),
        sa.UniqueConstraint("identity_uuid", "name", name=op.f("uq_quota_identity_uuid_name")),
    )

    op.create_table(
        "shared_resource",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("resource_uuid", sa.String(length=32), nullable=False),
        sa.Column("resource_type", sa.String(length=64), nullable=False),
        sa.Column("owner_account_uuid", sa.String(length=32), nullable=False),
        sa.Column("receiver_account_uuid", sa.String(length=32), nullable=True),
        sa.Column("to_public", sa.Boolean(), nullable=False),
        _timestamp("created_at"),
        sa.CheckConstraint(
            "(to_public AND receiver_account_uuid IS NULL) OR "
            "(NOT to_public AND receiver_account_uuid IS NOT NULL)",
            name=op.f("ck_shared_resource_target"),
        ),
        sa.ForeignKeyConstraint(
            ["receiver_account_uuid"],
            ["account.uuid"],
            name=op.f("fk_shared_resource_receiver_account_uuid_account"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_shared_resource")),
        sa.UniqueConstraint(
            "resource_uuid",
            "receiver_account_uuid",
            name=op.f("uq_shared_resource_resource_uuid_receiver_account_uuid"),
            postgresql_nulls_not_distinct=True,
        ),
    )
    for column in ("owner_account_uuid", "receiver_account_uuid", "to_public"):
        op.create_index(op.f(f"ix_shared_resource_{column}"), "shared_resource", [column], unique=False)


def downgrade() -> None:
    # Dropping a table drops its indexes and constraints; children before the account table.
    op.drop_table("shared_resource")
    op.drop_table("quota")
    op.drop_table("account_session")
    op.drop_table("account")
