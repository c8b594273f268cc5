"""vrouter services: the VR appliances (one per guest L3) and port-forwarding rules

Revision ID: 0015
Revises: 0017 (0013 in the brief; chained after main's head so there is one head;
the lead re-chains at merge)
"""

import sqlalchemy as sa
from alembic import op

from mgmt.core import resourceindex

revision = "0015"
down_revision = "0017"  # chain: ..., 0014, 0016, 0017, 0015 (the lead re-chains)
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
        "virtual_router_vm",
        sa.Column("uuid", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("guest_l3_network_uuid", sa.String(length=32), nullable=False),
        sa.Column("offering_uuid", sa.String(length=32), nullable=False),
        sa.Column("management_network_uuid", sa.String(length=32), nullable=False),
        sa.Column("public_network_uuid", sa.String(length=32), nullable=False),
        sa.Column("public_ip", sa.String(length=15), nullable=True),
        sa.Column("guest_ip", sa.String(length=15), nullable=True),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("status_reason", sa.String(length=1024), nullable=True),
        sa.Column("last_sync_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["guest_l3_network_uuid"],
            ["l3_network.uuid"],
            name=op.f("fk_virtual_router_vm_guest_l3_network_uuid_l3_network"),
        ),
        sa.ForeignKeyConstraint(
            ["offering_uuid"],
            ["virtual_router_offering.uuid"],
            name=op.f("fk_virtual_router_vm_offering_uuid_virtual_router_offering"),
        ),
        sa.PrimaryKeyConstraint("uuid", name=op.f("pk_virtual_router_vm")),
        sa.UniqueConstraint("guest_l3_network_uuid", name=op.f("uq_virtual_router_vm_guest_l3_network_uuid")),
    )
    for column in ("offering_uuid", "status"):
        op.create_index(op.f(f"ix_virtual_router_vm_{column}"), "virtual_router_vm", [column])
    op.create_table(
        "port_forwarding_rule",
        *_resource_columns(),
        sa.Column("vip_uuid", sa.String(length=32), nullable=False),
        sa.Column("vip_ip", sa.String(length=15), nullable=False),
        sa.Column("protocol_type", sa.String(length=8), nullable=False),
        sa.Column("vip_port_start", sa.Integer(), nullable=False),
        sa.Column("vip_port_end", sa.Integer(), nullable=False),
        sa.Column("private_port_start", sa.Integer(), nullable=False),
        sa.Column("private_port_end", sa.Integer(), nullable=False),
        sa.Column("allowed_cidr", sa.String(length=18), nullable=True),
        sa.Column("vm_nic_uuid", sa.String(length=32), nullable=True),
        sa.Column("guest_ip", sa.String(length=15), nullable=True),
        sa.Column("state", sa.String(length=32), nullable=False),
        sa.ForeignKeyConstraint(
            ["vip_uuid"], ["vip.uuid"], name=op.f("fk_port_forwarding_rule_vip_uuid_vip")
        ),
        sa.PrimaryKeyConstraint("uuid", name=op.f("pk_port_forwarding_rule")),
    )
    for column in ("name", "owner_account_uuid", "vip_uuid", "vm_nic_uuid"):
        op.create_index(op.f(f"ix_port_forwarding_rule_{column}"), "port_forwarding_rule", [column])
    resourceindex.index_table(op.get_bind(), "port_forwarding_rule")  # one uuid namespace (0014)


def downgrade() -> None:
    op.drop_table("port_forwarding_rule")
    op.drop_table("virtual_router_vm")
