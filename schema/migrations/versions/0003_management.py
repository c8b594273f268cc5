"""management cluster (nodes, ring partitions, jobs)

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

PARTITIONS = 256  # fixed for the life of an installation: every node reads it from cluster_meta


def upgrade() -> None:
    now = sa.text("now()")
    op.create_table(
        "management_node",
        sa.Column("uuid", sa.String(length=32), nullable=False),
        sa.Column("address", sa.String(length=255), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("joined_at", sa.DateTime(timezone=True), server_default=now, nullable=False),
        sa.Column("last_heartbeat", sa.DateTime(timezone=True), server_default=now, nullable=False),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), server_default=now, nullable=False),
        sa.PrimaryKeyConstraint("uuid", name=op.f("pk_management_node")),
    )
    op.create_index(op.f("ix_management_node_state"), "management_node", ["state"], unique=False)

    meta = op.create_table(
        "cluster_meta",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        sa.Column("partitions", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cluster_meta")),
    )
    op.bulk_insert(meta, [{"id": 1, "epoch": 0, "partitions": PARTITIONS}])

    partition = op.create_table(
        "ring_partition",
        sa.Column("partition", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("owner_node_uuid", sa.String(length=32), nullable=True),
        sa.Column("token", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("partition", name=op.f("pk_ring_partition")),
    )
    op.create_index(op.f("ix_ring_partition_owner_node_uuid"), "ring_partition", ["owner_node_uuid"], unique=False)
    op.bulk_insert(partition, [{"partition": p, "token": 0} for p in range(PARTITIONS)])

    op.create_table(
        "job",
        sa.Column("uuid", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("resource_uuid", sa.String(length=32), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("body", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("owner_account_uuid", sa.String(length=32), nullable=False),
        sa.Column("account", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("reply_to", sa.String(length=255), nullable=True),
        sa.Column("deadline", sa.Float(), nullable=True),
        sa.Column("node_uuid", sa.String(length=32), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("result", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("error", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("replied", sa.Boolean(), nullable=False),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=now, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=now, nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("uuid", name=op.f("pk_job")),
    )
    op.create_index("ix_job_partition_state", "job", ["partition", "state"], unique=False)
    op.create_index(op.f("ix_job_name"), "job", ["name"], unique=False)
    op.create_index(op.f("ix_job_resource_uuid"), "job", ["resource_uuid"], unique=False)
    op.create_index(op.f("ix_job_state"), "job", ["state"], unique=False)
    op.create_index(op.f("ix_job_owner_account_uuid"), "job", ["owner_account_uuid"], unique=False)
    op.create_index(op.f("ix_job_created_at"), "job", ["created_at"], unique=False)


def downgrade() -> None:
    op.drop_table("job")
    op.drop_table("ring_partition")
    op.drop_table("cluster_meta")
    op.drop_table("management_node")
