"""eip (elastic IPs: a VIP mapped onto a VM NIC) and the Flat provider's EIPs applied per host

Revision ID: 0016
Revises: 0014
"""

import sqlalchemy as sa
from alembic import op

from mgmt.core import resourceindex

revision = "0016"
down_revision = "0014"  # chain: 0009, 0013, 0011, 0012, 0014, 0016, 0017
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "eip",
        sa.Column("uuid", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("owner_account_uuid", sa.String(length=32), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("vip_uuid", sa.String(length=32), nullable=False),
        sa.Column("vm_nic_uuid", sa.String(length=32), nullable=True),
        sa.Column("vip_ip", sa.String(length=15), nullable=False),
        sa.Column("state", sa.String(length=32), nullable=False),
        sa.ForeignKeyConstraint(
            ["vip_uuid"], ["vip.uuid"], name=op.f("fk_eip_vip_uuid_vip"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["vm_nic_uuid"], ["vm_nic.uuid"], name=op.f("fk_eip_vm_nic_uuid_vm_nic"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("uuid", name=op.f("pk_eip")),
        sa.UniqueConstraint("vip_uuid", name=op.f("uq_eip_vip_uuid")),
    )
    for column in ("name", "owner_account_uuid", "vm_nic_uuid"):
        op.create_index(op.f(f"ix_eip_{column}"), "eip", [column], unique=False)
    resourceindex.index_table(op.get_bind(), "eip")  # one uuid namespace (0014)
    op.create_table(
        "flat_eip_host",
        sa.Column("host_uuid", sa.String(length=32), nullable=False),
        sa.Column("eip_uuid", sa.String(length=32), nullable=False),
        sa.ForeignKeyConstraint(
            ["host_uuid"], ["host.uuid"], name=op.f("fk_flat_eip_host_host_uuid_host"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("host_uuid", "eip_uuid", name=op.f("pk_flat_eip_host")),
    )


def downgrade() -> None:
    op.drop_table("flat_eip_host")
    op.drop_table("eip")
