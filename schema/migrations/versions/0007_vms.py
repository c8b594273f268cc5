"""VM instances, NICs and volumes

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def _resource_columns() -> list[sa.Column]:
    now = sa.text("now()")
    return [
        sa.Column("uuid", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=now, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=now, nullable=False),
        sa.Column("owner_account_uuid", sa.String(length=32), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
    ]


def _indexes(table: str, *columns: str) -> None:
    for column in columns:
        op.create_index(op.f(f"ix_{table}_{column}"), table, [column], unique=False)


def upgrade() -> None:
    op.create_table(
        "vm_instance",
        *_resource_columns(),
        sa.Column("zone_uuid", sa.String(length=32), nullable=False),
        sa.Column("cluster_uuid", sa.String(length=32), nullable=True),
        sa.Column("host_uuid", sa.String(length=32), nullable=True),
        sa.Column("last_host_uuid", sa.String(length=32), nullable=True),
        sa.Column("instance_offering_uuid", sa.String(length=32), nullable=True),
        sa.Column("image_uuid", sa.String(length=32), nullable=True),
        sa.Column("root_volume_uuid", sa.String(length=32), nullable=True),
        sa.Column("default_l3_network_uuid", sa.String(length=32), nullable=True),
        sa.Column("hypervisor_type", sa.String(length=32), nullable=False),
        sa.Column("platform", sa.String(length=32), nullable=False),
        sa.Column("cpu_num", sa.Integer(), nullable=False),
        sa.Column("memory_size", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.String(length=32), nullable=False),
        sa.Column("allocator_strategy", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("uuid", name=op.f("pk_vm_instance")),
    )
    _indexes(
        "vm_instance", "name", "owner_account_uuid", "zone_uuid", "cluster_uuid", "host_uuid", "last_host_uuid",
        "instance_offering_uuid", "image_uuid", "state",
    )
    op.create_table(
        "vm_nic",
        sa.Column("uuid", sa.String(length=32), nullable=False),
        sa.Column("vm_instance_uuid", sa.String(length=32), nullable=False),
        sa.Column("l3_network_uuid", sa.String(length=32), nullable=False),
        sa.Column("ip", sa.String(length=64), nullable=True),
        sa.Column("netmask", sa.String(length=64), nullable=True),
        sa.Column("gateway", sa.String(length=64), nullable=True),
        sa.Column("mac", sa.String(length=17), nullable=False),
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("owner_account_uuid", sa.String(length=32), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(
            ["vm_instance_uuid"], ["vm_instance.uuid"], name=op.f("fk_vm_nic_vm_instance_uuid_vm_instance")
        ),
        sa.PrimaryKeyConstraint("uuid", name=op.f("pk_vm_nic")),
        sa.UniqueConstraint("mac", name=op.f("uq_vm_nic_mac")),
        sa.UniqueConstraint("vm_instance_uuid", "device_id", name=op.f("uq_vm_nic_vm_instance_uuid_device_id")),
    )
    _indexes("vm_nic", "vm_instance_uuid", "l3_network_uuid", "ip", "owner_account_uuid")
    op.create_table(
        "volume",
        *_resource_columns(),
        sa.Column("vm_instance_uuid", sa.String(length=32), nullable=True),
        sa.Column("primary_storage_uuid", sa.String(length=32), nullable=True),
        sa.Column("disk_offering_uuid", sa.String(length=32), nullable=True),
        sa.Column("image_uuid", sa.String(length=32), nullable=True),
        sa.Column("type", sa.String(length=16), nullable=False),
        sa.Column("format", sa.String(length=16), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("install_path", sa.String(length=2048), nullable=True),
        sa.Column("device_id", sa.Integer(), nullable=True),
        sa.Column("state", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("host_uuid", sa.String(length=32), nullable=True),
        sa.PrimaryKeyConstraint("uuid", name=op.f("pk_volume")),
    )
    _indexes(
        "volume", "name", "owner_account_uuid", "vm_instance_uuid", "primary_storage_uuid", "disk_offering_uuid",
        "type", "status", "host_uuid",
    )


def downgrade() -> None:
    op.drop_table("volume")
    op.drop_table("vm_nic")
    op.drop_table("vm_instance")
