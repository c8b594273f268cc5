"""ldap (directory servers, their service secrets, bindings to accounts, sessions they granted)

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def _timestamp(name: str) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False)


def upgrade() -> None:
    op.create_table(
        "ldap_server",
        sa.Column("uuid", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        _timestamp("created_at"),
        _timestamp("updated_at"),
        sa.Column("owner_account_uuid", sa.String(length=32), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("url", sa.String(length=1024), nullable=False),
        sa.Column("base", sa.String(length=1024), nullable=False),
        sa.Column("username", sa.String(length=1024), nullable=True),
        sa.Column("encryption", sa.String(length=16), nullable=False),
        sa.Column("username_property", sa.String(length=64), nullable=False),
        sa.Column("filter", sa.String(length=1024), nullable=True),
        sa.Column("user_dn_template", sa.String(length=1024), nullable=True),
        sa.Column("timeout", sa.Integer(), nullable=False),
        sa.Column("ca_certificate", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("uuid", name=op.f("pk_ldap_server")),
    )
    op.create_index(op.f("ix_ldap_server_name"), "ldap_server", ["name"], unique=False)
    op.create_index(op.f("ix_ldap_server_owner_account_uuid"), "ldap_server", ["owner_account_uuid"], unique=False)

    op.create_table(
        "ldap_server_secret",
        sa.Column("ldap_server_uuid", sa.String(length=32), nullable=False),
        sa.Column("password", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["ldap_server_uuid"],
            ["ldap_server.uuid"],
            name=op.f("fk_ldap_server_secret_ldap_server_uuid_ldap_server"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("ldap_server_uuid", name=op.f("pk_ldap_server_secret")),
    )

    op.create_table(
        "ldap_binding",
        sa.Column("uuid", sa.String(length=32), nullable=False),
        sa.Column("ldap_server_uuid", sa.String(length=32), nullable=False),
        sa.Column("ldap_uid", sa.String(length=255), nullable=False),
        sa.Column("ldap_dn", sa.String(length=1024), nullable=False),
        sa.Column("dn_key", sa.String(length=1024), nullable=False),
        sa.Column("account_uuid", sa.String(length=32), nullable=False),
        _timestamp("created_at"),
        sa.ForeignKeyConstraint(
            ["account_uuid"], ["account.uuid"], name=op.f("fk_ldap_binding_account_uuid_account"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["ldap_server_uuid"],
            ["ldap_server.uuid"],
            name=op.f("fk_ldap_binding_ldap_server_uuid_ldap_server"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("uuid", name=op.f("pk_ldap_binding")),
        sa.UniqueConstraint("ldap_server_uuid", "dn_key", name=op.f("uq_ldap_binding_ldap_server_uuid_dn_key")),
    )
    op.create_index(op.f("ix_ldap_binding_account_uuid"), "ldap_binding", ["account_uuid"], unique=False)

    op.create_table(
        "ldap_binding_session",
        sa.Column("session_uuid", sa.String(length=32), nullable=False),
        sa.Column("binding_uuid", sa.String(length=32), nullable=False),
        sa.ForeignKeyConstraint(
            ["binding_uuid"],
            ["ldap_binding.uuid"],
            name=op.f("fk_ldap_binding_session_binding_uuid_ldap_binding"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["session_uuid"],
            ["account_session.uuid"],
            name=op.f("fk_ldap_binding_session_session_uuid_account_session"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("session_uuid", name=op.f("pk_ldap_binding_session")),
    )
    op.create_index(
        op.f("ix_ldap_binding_session_binding_uuid"), "ldap_binding_session", ["binding_uuid"], unique=False
    )


def downgrade() -> None:
    # Dropping a table drops its indexes and constraints; children first.
    op.drop_table("ldap_binding_session")
    op.drop_table("ldap_binding")
    op.drop_table("ldap_server_secret")
    op.drop_table("ldap_server")
