"""infrastructure (hosts, primary and backup storage, images, offerings)

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def _resource_columns() -> list[sa.Column]:
    """The columns of schema.db.base.ResourceMixin, which every resource table has."""
    return [
        sa.Column("uuid", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("owner_account_uuid", sa.String(length=32), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
    ]


def _resource_indexes(table: str) -> None:
    op.create_index(op.f(f"ix_{table}_name"), table, ["name"], unique=False)
    op.create_index(op.f(f"ix_{table}_owner_account_uuid"), table, ["owner_account_uuid"], unique=False)


def _capacity_check(table: str) -> sa.CheckConstraint:
    return sa.CheckConstraint(
        "available_capacity >= 0 AND available_capacity <= total_capacity", name=op.f(f"ck_{table}_capacity")
    )


def upgrade() -> None:
    op.create_table(
        "host",
        *_resource_columns(),
        sa.Column("zone_uuid", sa.String(length=32), nullable=False),
        sa.Column("cluster_uuid", sa.String(length=32), nullable=False),
        sa.Column("hypervisor_type", sa.String(length=32), nullable=False),
        sa.Column("management_ip", sa.String(length=255), nullable=False),
        sa.Column("state", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("status_reason", sa.Text(), nullable=True),
        sa.Column("ssh_port", sa.Integer(), nullable=True),
        sa.Column("username", sa.String(length=255), nullable=True),
        sa.Column("total_cpu", sa.Integer(), nullable=False),
        sa.Column("available_cpu", sa.Integer(), nullable=False),
        sa.Column("total_memory_size", sa.BigInteger(), nullable=False),
        sa.Column("available_memory_size", sa.BigInteger(), nullable=False),
        sa.CheckConstraint(
            "available_cpu >= 0 AND available_cpu <= total_cpu", name=op.f("ck_host_cpu_capacity")
        ),
        sa.CheckConstraint(
            "available_memory_size >= 0 AND available_memory_size <= total_memory_size",
            name=op.f("ck_host_memory_capacity"),
        ),
        sa.ForeignKeyConstraint(["cluster_uuid"], ["cluster.uuid"], name=op.f("fk_host_cluster_uuid_cluster")),
        sa.ForeignKeyConstraint(["zone_uuid"], ["zone.uuid"], name=op.f("fk_host_zone_uuid_zone")),
        sa.PrimaryKeyConstraint("uuid", name=op.f("pk_host")),
        sa.UniqueConstraint("management_ip", name=op.f("uq_host_management_ip")),
    )
    _resource_indexes("host")
    op.create_index(op.f("ix_host_zone_uuid"), "host", ["zone_uuid"], unique=False)
    op.create_index(op.f("ix_host_cluster_uuid"), "host", ["cluster_uuid"], unique=False)
    op.create_index(op.f("ix_host_state"), "host", ["state"], unique=False)
    op.create_index(op.f("ix_host_status"), "host", ["status"], unique=False)

    op.create_table(
        "host_secret",
        sa.Column("host_uuid", sa.String(length=32), nullable=False),
        sa.Column("password", sa.Text(), nullable=True),
        sa.Column("ssh_key", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["host_uuid"], ["host.uuid"], name=op.f("fk_host_secret_host_uuid_host"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("host_uuid", name=op.f("pk_host_secret")),
    )

    op.create_table(
        "primary_storage",
        *_resource_columns(),
        sa.Column("zone_uuid", sa.String(length=32), nullable=False),
        sa.Column("type", sa.String(length=32), nullable=False),
        sa.Column("url", sa.String(length=2048), nullable=False),
        sa.Column("state", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("total_capacity", sa.BigInteger(), nullable=False),
        sa.Column("available_capacity", sa.BigInteger(), nullable=False),
        _capacity_check("primary_storage"),
        sa.ForeignKeyConstraint(["zone_uuid"], ["zone.uuid"], name=op.f("fk_primary_storage_zone_uuid_zone")),
        sa.PrimaryKeyConstraint("uuid", name=op.f("pk_primary_storage")),
    )
    _resource_indexes("primary_storage")
    op.create_index(op.f("ix_primary_storage_zone_uuid"), "primary_storage", ["zone_uuid"], unique=False)
    op.create_index(op.f("ix_primary_storage_type"), "primary_storage", ["type"], unique=False)
    op.create_index(op.f("ix_primary_storage_state"), "primary_storage", ["state"], unique=False)
    op.create_index(op.f("ix_primary_storage_status"), "primary_storage", ["status"], unique=False)

    op.create_table(
        "primary_storage_cluster_ref",
        sa.Column("primary_storage_uuid", sa.String(length=32), nullable=False),
        sa.Column("cluster_uuid", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(
            ["cluster_uuid"], ["cluster.uuid"], name=op.f("fk_primary_storage_cluster_ref_cluster_uuid_cluster")
        ),
        sa.ForeignKeyConstraint(
            ["primary_storage_uuid"],
            ["primary_storage.uuid"],
            name=op.f("fk_primary_storage_cluster_ref_primary_storage_uuid_primary_storage"),
        ),
        sa.PrimaryKeyConstraint("primary_storage_uuid", "cluster_uuid", name=op.f("pk_primary_storage_cluster_ref")),
    )
    op.create_index(
        op.f("ix_primary_storage_cluster_ref_cluster_uuid"), "primary_storage_cluster_ref", ["cluster_uuid"]
    )

    op.create_table(
        "backup_storage",
        *_resource_columns(),
        sa.Column("type", sa.String(length=32), nullable=False),
        sa.Column("url", sa.String(length=2048), nullable=False),
        sa.Column("hostname", sa.String(length=255), nullable=True),
        sa.Column("ssh_port", sa.Integer(), nullable=True),
        sa.Column("username", sa.String(length=255), nullable=True),
        sa.Column("state", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("status_reason", sa.Text(), nullable=True),
        sa.Column("total_capacity", sa.BigInteger(), nullable=False),
        sa.Column("available_capacity", sa.BigInteger(), nullable=False),
        _capacity_check("backup_storage"),
        sa.PrimaryKeyConstraint("uuid", name=op.f("pk_backup_storage")),
    )
    _resource_indexes("backup_storage")
    op.create_index(op.f("ix_backup_storage_type"), "backup_storage", ["type"], unique=False)
    op.create_index(op.f("ix_backup_storage_state"), "backup_storage", ["state"], unique=False)
    op.create_index(op.f("ix_backup_storage_status"), "backup_storage", ["status"], unique=False)

    op.create_table(
        "backup_storage_zone_ref",
        sa.Column("backup_storage_uuid", sa.String(length=32), nullable=False),
        sa.Column("zone_uuid", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(
            ["backup_storage_uuid"],
            ["backup_storage.uuid"],
            name=op.f("fk_backup_storage_zone_ref_backup_storage_uuid_backup_storage"),
        ),
        sa.ForeignKeyConstraint(["zone_uuid"], ["zone.uuid"], name=op.f("fk_backup_storage_zone_ref_zone_uuid_zone")),
        sa.PrimaryKeyConstraint("backup_storage_uuid", "zone_uuid", name=op.f("pk_backup_storage_zone_ref")),
    )
    op.create_index(op.f("ix_backup_storage_zone_ref_zone_uuid"), "backup_storage_zone_ref", ["zone_uuid"])

    op.create_table(
        "backup_storage_secret",
        sa.Column("backup_storage_uuid", sa.String(length=32), nullable=False),
        sa.Column("password", sa.Text(), nullable=True),
        sa.Column("ssh_key", sa.Text(), nullable=True),
        sa.Column("host_key", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["backup_storage_uuid"],
            ["backup_storage.uuid"],
            name=op.f("fk_backup_storage_secret_backup_storage_uuid_backup_storage"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("backup_storage_uuid", name=op.f("pk_backup_storage_secret")),
    )

    op.create_table(
        "image",
        *_resource_columns(),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("format", sa.String(length=16), nullable=False),
        sa.Column("media_type", sa.String(length=32), nullable=False),
        sa.Column("platform", sa.String(length=32), nullable=False),
        sa.Column("guest_os_type", sa.String(length=255), nullable=True),
        sa.Column("system", sa.Boolean(), nullable=False),
        sa.Column("state", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("status_reason", sa.Text(), nullable=True),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("actual_size", sa.BigInteger(), nullable=False),
        sa.Column("md5sum", sa.String(length=32), nullable=True),
        sa.Column("sha256", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("uuid", name=op.f("pk_image")),
    )
    _resource_indexes("image")
    op.create_index(op.f("ix_image_state"), "image", ["state"], unique=False)
    op.create_index(op.f("ix_image_status"), "image", ["status"], unique=False)

    op.create_table(
        "image_backup_storage_ref",
        sa.Column("image_uuid", sa.String(length=32), nullable=False),
        sa.Column("backup_storage_uuid", sa.String(length=32), nullable=False),
        sa.Column("install_path", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(
            ["backup_storage_uuid"],
            ["backup_storage.uuid"],
            name=op.f("fk_image_backup_storage_ref_backup_storage_uuid_backup_storage"),
        ),
        sa.ForeignKeyConstraint(
            ["image_uuid"], ["image.uuid"], name=op.f("fk_image_backup_storage_ref_image_uuid_image")
        ),
        sa.PrimaryKeyConstraint("image_uuid", "backup_storage_uuid", name=op.f("pk_image_backup_storage_ref")),
    )
    op.create_index(
        op.f("ix_image_backup_storage_ref_backup_storage_uuid"), "image_backup_storage_ref", ["backup_storage_uuid"]
    )

    op.create_table(
        "instance_offering",
        *_resource_columns(),
        sa.Column("cpu_num", sa.Integer(), nullable=False),
        sa.Column("memory_size", sa.BigInteger(), nullable=False),
        sa.Column("allocator_strategy", sa.String(length=64), nullable=True),
        sa.Column("type", sa.String(length=32), nullable=False),
        sa.Column("state", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("uuid", name=op.f("pk_instance_offering")),
    )
    _resource_indexes("instance_offering")
    op.create_index(op.f("ix_instance_offering_state"), "instance_offering", ["state"], unique=False)

    op.create_table(
        "disk_offering",
        *_resource_columns(),
        sa.Column("disk_size", sa.BigInteger(), nullable=False),
        sa.Column("allocator_strategy", sa.String(length=64), nullable=True),
        sa.Column("state", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("uuid", name=op.f("pk_disk_offering")),
    )
    _resource_indexes("disk_offering")
    op.create_index(op.f("ix_disk_offering_state"), "disk_offering", ["state"], unique=False)


def downgrade() -> None:
    # Children before parents; dropping a table drops its indexes and constraints.
    for table in (
        "disk_offering",
        "instance_offering",
        "image_backup_storage_ref",
        "image",
        "backup_storage_secret",
        "backup_storage_zone_ref",
        "backup_storage",
        "primary_storage_cluster_ref",
        "primary_storage",
        "host_secret",
        "host",
    ):
        op.drop_table(table)
