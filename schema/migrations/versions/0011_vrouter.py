"""vrouter (virtual-router offerings and VIPs)

Revision ID: 0011
Revises: 0013 (0009 in the brief; after main took 0013 on 0009, chained here so there is one head)
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0013"
branch_labels = None
depends_on = None


def _resource_columns() -> list[sa.Column]:
    return [
        sa.Column("uuid", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("owner_account_uuid", sa.String(length=32), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "virtual_router_offering",
        *_resource_columns(),
        sa.Column("zone_uuid", sa.String(length=32), nullable=False),
        sa.Column("image_uuid", sa.String(length=32), nullable=False),
        sa.Column("management_network_uuid", sa.String(length=32), nullable=False),
        sa.Column("public_network_uuid", sa.String(length=32), nullable=False),
        sa.Column("cpu_num", sa.Integer(), nullable=False),
        sa.Column("memory_size", sa.BigInteger(), nullable=False),
        sa.Column("is_default", sa.Boolean(), nullable=False),
        sa.Column("state", sa.String(length=32), nullable=False),
        sa.ForeignKeyConstraint(
            ["zone_uuid"], ["zone.uuid"], name=op.f("fk_virtual_router_offering_zone_uuid_zone")
        ),
        sa.ForeignKeyConstraint(
            ["image_uuid"], ["image.uuid"], name=op.f("fk_virtual_router_offering_image_uuid_image")
        ),
        sa.ForeignKeyConstraint(
            ["management_network_uuid"],
            ["l3_network.uuid"],
            name=op.f("fk_virtual_router_offering_management_network_uuid_l3_network"),
        ),
        sa.ForeignKeyConstraint(
            ["public_network_uuid"],
            ["l3_network.uuid"],
            name=op.f("fk_virtual_router_offering_public_network_uuid_l3_network"),
        ),
        sa.PrimaryKeyConstraint("uuid", name=op.f("pk_virtual_router_offering")),
    )
    for column in ("name", "owner_account_uuid", "zone_uuid", "image_uuid", "management_network_uuid",
                   "public_network_uuid", "state"):  # fmt: skip
        op.create_index(
            op.f(f"ix_virtual_router_offering_{column}"), "virtual_router_offering", [column], unique=False
        )
    op.create_table(
        "vip",
        *_resource_columns(),
        sa.Column("l3_network_uuid", sa.String(length=32), nullable=False),
        sa.Column("ip", sa.String(length=15), nullable=False),
        sa.Column("gateway", sa.String(length=15), nullable=False),
        sa.Column("netmask", sa.String(length=15), nullable=False),
        sa.Column("use_for", sa.String(length=32), nullable=True),
        sa.Column("state", sa.String(length=32), nullable=False),
        sa.ForeignKeyConstraint(
            ["l3_network_uuid"], ["l3_network.uuid"], name=op.f("fk_vip_l3_network_uuid_l3_network")
        ),
        sa.PrimaryKeyConstraint("uuid", name=op.f("pk_vip")),
        sa.UniqueConstraint("l3_network_uuid", "ip", name=op.f("uq_vip_l3_network_uuid_ip")),
    )
    for column in ("name", "owner_account_uuid", "l3_network_uuid"):
        op.create_index(op.f(f"ix_vip_{column}"), "vip", [column], unique=False)


def downgrade() -> None:
    op.drop_table("vip")
    op.drop_table("virtual_router_offering")
