"""security groups (groups, rules, L3 and NIC references, what each host last applied, failed hosts)
and VXLAN (VNI ranges of pools, the VNI of each VXLAN network) and the Flat provider (VMs served per host)

Revision ID: 0012
Revises: 0011
"""

from alembic import op
import sqlalchemy as sa


revision = "0012"
down_revision = "0011"  # chained in merge order: 0009, 0013, 0011, 0012
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "security_group",
        sa.Column("state", sa.String(length=32), nullable=False),
        sa.Column("uuid", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("owner_account_uuid", sa.String(length=32), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("uuid", name=op.f("pk_security_group")),
    )
    op.create_index(op.f("ix_security_group_name"), "security_group", ["name"], unique=False)
    op.create_index(
        op.f("ix_security_group_owner_account_uuid"), "security_group", ["owner_account_uuid"], unique=False
    )
    op.create_table(
        "security_group_rule",
        sa.Column("uuid", sa.String(length=32), nullable=False),
        sa.Column("security_group_uuid", sa.String(length=32), nullable=False),
        sa.Column("type", sa.String(length=16), nullable=False),
        sa.Column("protocol", sa.String(length=8), nullable=False),
        sa.Column("start_port", sa.Integer(), nullable=True),
        sa.Column("end_port", sa.Integer(), nullable=True),
        sa.Column("allowed_cidr", sa.String(length=64), nullable=True),
        sa.Column("remote_security_group_uuid", sa.String(length=32), nullable=True),
        sa.Column("owner_account_uuid", sa.String(length=32), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(
            ["remote_security_group_uuid"],
            ["security_group.uuid"],
            name=op.f("fk_security_group_rule_remote_security_group_uuid_security_group"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["security_group_uuid"],
            ["security_group.uuid"],
            name=op.f("fk_security_group_rule_security_group_uuid_security_group"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("uuid", name=op.f("pk_security_group_rule")),
    )
    op.create_index(
        op.f("ix_security_group_rule_owner_account_uuid"),
        "security_group_rule",
        ["owner_account_uuid"],
        unique=False,
    )
    op.create_index(
        op.f("ix_security_group_rule_remote_security_group_uuid"),
        "security_group_rule",
        ["remote_security_group_uuid"],
        unique=False,
    )
    op.create_index(
        op.f("ix_security_group_rule_security_group_uuid"),
        "security_group_rule",
        ["security_group_uuid"],
        unique=False,
    )
    op.create_table(
        "vm_nic_security_group_ref",
        sa.Column("uuid", sa.String(length=32), nullable=False),
        sa.Column("vm_nic_uuid", sa.String(length=32), nullable=False),
        sa.Column("vm_instance_uuid", sa.String(length=32), nullable=False),
        sa.Column("security_group_uuid", sa.String(length=32), nullable=False),
        sa.Column("owner_account_uuid", sa.String(length=32), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(
            ["security_group_uuid"],
            ["security_group.uuid"],
            name=op.f("fk_vm_nic_security_group_ref_security_group_uuid_security_group"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["vm_nic_uuid"],
            ["vm_nic.uuid"],
            name=op.f("fk_vm_nic_security_group_ref_vm_nic_uuid_vm_nic"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("uuid", name=op.f("pk_vm_nic_security_group_ref")),
        sa.UniqueConstraint(
            "vm_nic_uuid",
            "security_group_uuid",
            name=op.f("uq_vm_nic_security_group_ref_vm_nic_uuid_security_group_uuid"),
        ),
    )
    op.create_index(
        op.f("ix_vm_nic_security_group_ref_owner_account_uuid"),
        "vm_nic_security_group_ref",
        ["owner_account_uuid"],
        unique=False,
    )
    op.create_index(
        op.f("ix_vm_nic_security_group_ref_security_group_uuid"),
        "vm_nic_security_group_ref",
        ["security_group_uuid"],
        unique=False,
    )
    op.create_index(
        op.f("ix_vm_nic_security_group_ref_vm_instance_uuid"),
        "vm_nic_security_group_ref",
        ["vm_instance_uuid"],
        unique=False,
    )
    op.create_index(
        op.f("ix_vm_nic_security_group_ref_vm_nic_uuid"),
        "vm_nic_security_group_ref",
        ["vm_nic_uuid"],
        unique=False,
    )
    op.create_table(
        "security_group_failed_host",
        sa.Column("host_uuid", sa.String(length=32), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("failed_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(
            ["host_uuid"],
            ["host.uuid"],
            name=op.f("fk_security_group_failed_host_host_uuid_host"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("host_uuid", name=op.f("pk_security_group_failed_host")),
    )
    op.create_table(
        "security_group_host_nic",
        sa.Column("host_uuid", sa.String(length=32), nullable=False),
        sa.Column("vm_nic_uuid", sa.String(length=32), nullable=False),
        sa.Column("security_group_uuid", sa.String(length=32), nullable=False),
        sa.Column("vm_instance_uuid", sa.String(length=32), nullable=False),
        sa.ForeignKeyConstraint(
            ["host_uuid"],
            ["host.uuid"],
            name=op.f("fk_security_group_host_nic_host_uuid_host"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "host_uuid", "vm_nic_uuid", "security_group_uuid", name=op.f("pk_security_group_host_nic")
        ),
    )
    op.create_index(
        op.f("ix_security_group_host_nic_security_group_uuid"),
        "security_group_host_nic",
        ["security_group_uuid"],
        unique=False,
    )
    op.create_index(
        op.f("ix_security_group_host_nic_vm_instance_uuid"),
        "security_group_host_nic",
        ["vm_instance_uuid"],
        unique=False,
    )
    op.create_index(
        op.f("ix_security_group_host_nic_vm_nic_uuid"),
        "security_group_host_nic",
        ["vm_nic_uuid"],
        unique=False,
    )
    op.create_table(
        "security_group_l3_network_ref",
        sa.Column("uuid", sa.String(length=32), nullable=False),
        sa.Column("security_group_uuid", sa.String(length=32), nullable=False),
        sa.Column("l3_network_uuid", sa.String(length=32), nullable=False),
        sa.Column("owner_account_uuid", sa.String(length=32), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(
            ["l3_network_uuid"],
            ["l3_network.uuid"],
            name=op.f("fk_security_group_l3_network_ref_l3_network_uuid_l3_network"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["security_group_uuid"],
            ["security_group.uuid"],
            name=op.f("fk_security_group_l3_network_ref_security_group_uuid_security_group"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("uuid", name=op.f("pk_security_group_l3_network_ref")),
        sa.UniqueConstraint(
            "security_group_uuid",
            "l3_network_uuid",
            name=op.f("uq_security_group_l3_network_ref_security_group_uuid_l3_network_uuid"),
        ),
    )
    op.create_index(
        op.f("ix_security_group_l3_network_ref_l3_network_uuid"),
        "security_group_l3_network_ref",
        ["l3_network_uuid"],
        unique=False,
    )
    op.create_index(
        op.f("ix_security_group_l3_network_ref_owner_account_uuid"),
        "security_group_l3_network_ref",
        ["owner_account_uuid"],
        unique=False,
    )
    op.create_index(
        op.f("ix_security_group_l3_network_ref_security_group_uuid"),
        "security_group_l3_network_ref",
        ["security_group_uuid"],
        unique=False,
    )
    op.create_table("l2_vxlan_network",
    sa.Column("uuid", sa.String(length=32), nullable=False),
    sa.Column("pool_uuid", sa.String(length=32), nullable=False),
    sa.Column("vni", sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(["pool_uuid"], ["l2_network.uuid"], name=op.f("fk_l2_vxlan_network_pool_uuid_l2_network")),
    sa.ForeignKeyConstraint(["uuid"], ["l2_network.uuid"], name=op.f("fk_l2_vxlan_network_uuid_l2_network"), ondelete="CASCADE"),
    sa.PrimaryKeyConstraint("uuid", name=op.f("pk_l2_vxlan_network")),
    sa.UniqueConstraint("pool_uuid", "vni", name=op.f("uq_l2_vxlan_network_pool_uuid_vni"))
    )
    op.create_index(op.f("ix_l2_vxlan_network_pool_uuid"), "l2_vxlan_network", ["pool_uuid"], unique=False)
    op.create_table("vni_range",
    sa.Column("l2_network_uuid", sa.String(length=32), nullable=False),
    sa.Column("start_vni", sa.Integer(), nullable=False),
    sa.Column("end_vni", sa.Integer(), nullable=False),
    sa.Column("uuid", sa.String(length=32), nullable=False),
    sa.Column("name", sa.String(length=255), nullable=False),
    sa.Column("description", sa.Text(), nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
    sa.Column("owner_account_uuid", sa.String(length=32), nullable=True),
    sa.Column("version", sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(["l2_network_uuid"], ["l2_network.uuid"], name=op.f("fk_vni_range_l2_network_uuid_l2_network"), ondelete="CASCADE"),
    sa.PrimaryKeyConstraint("uuid", name=op.f("pk_vni_range"))
    )
    op.create_index(op.f("ix_vni_range_l2_network_uuid"), "vni_range", ["l2_network_uuid"], unique=False)
    op.create_index(op.f("ix_vni_range_name"), "vni_range", ["name"], unique=False)
    op.create_index(op.f("ix_vni_range_owner_account_uuid"), "vni_range", ["owner_account_uuid"], unique=False)
    op.create_table("flat_dhcp_host_vm",
    sa.Column("host_uuid", sa.String(length=32), nullable=False),
    sa.Column("vm_instance_uuid", sa.String(length=32), nullable=False),
    sa.ForeignKeyConstraint(["host_uuid"], ["host.uuid"], name=op.f("fk_flat_dhcp_host_vm_host_uuid_host"), ondelete="CASCADE"),
    sa.PrimaryKeyConstraint("host_uuid", "vm_instance_uuid", name=op.f("pk_flat_dhcp_host_vm"))
    )
    op.create_index(op.f("ix_flat_dhcp_host_vm_vm_instance_uuid"), "flat_dhcp_host_vm", ["vm_instance_uuid"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_flat_dhcp_host_vm_vm_instance_uuid"), table_name="flat_dhcp_host_vm")
    op.drop_table("flat_dhcp_host_vm")
    op.drop_index(op.f("ix_vni_range_owner_account_uuid"), table_name="vni_range")
    op.drop_index(op.f("ix_vni_range_name"), table_name="vni_range")
    op.drop_index(op.f("ix_vni_range_l2_network_uuid"), table_name="vni_range")
    op.drop_table("vni_range")
    op.drop_index(op.f("ix_l2_vxlan_network_pool_uuid"), table_name="l2_vxlan_network")
    op.drop_table("l2_vxlan_network")
    op.drop_index(
        op.f("ix_security_group_l3_network_ref_security_group_uuid"),
        table_name="security_group_l3_network_ref",
    )
    op.drop_index(
        op.f("ix_security_group_l3_network_ref_owner_account_uuid"),
        table_name="security_group_l3_network_ref",
    )
    op.drop_index(
        op.f("ix_security_group_l3_network_ref_l3_network_uuid"), table_name="security_group_l3_network_ref"
    )
    op.drop_table("security_group_l3_network_ref")
    op.drop_index(op.f("ix_security_group_host_nic_vm_nic_uuid"), table_name="security_group_host_nic")
    op.drop_index(op.f("ix_security_group_host_nic_vm_instance_uuid"), table_name="security_group_host_nic")
    op.drop_index(
        op.f("ix_security_group_host_nic_security_group_uuid"), table_name="security_group_host_nic"
    )
    op.drop_table("security_group_host_nic")
    op.drop_table("security_group_failed_host")
    op.drop_index(op.f("ix_vm_nic_security_group_ref_vm_nic_uuid"), table_name="vm_nic_security_group_ref")
    op.drop_index(
        op.f("ix_vm_nic_security_group_ref_vm_instance_uuid"), table_name="vm_nic_security_group_ref"
    )
    op.drop_index(
        op.f("ix_vm_nic_security_group_ref_security_group_uuid"), table_name="vm_nic_security_group_ref"
    )
    op.drop_index(
        op.f("ix_vm_nic_security_group_ref_owner_account_uuid"), table_name="vm_nic_security_group_ref"
    )
    op.drop_table("vm_nic_security_group_ref")
    op.drop_index(op.f("ix_security_group_rule_security_group_uuid"), table_name="security_group_rule")
    op.drop_index(op.f("ix_security_group_rule_remote_security_group_uuid"), table_name="security_group_rule")
    op.drop_index(op.f("ix_security_group_rule_owner_account_uuid"), table_name="security_group_rule")
    op.drop_table("security_group_rule")
    op.drop_index(op.f("ix_security_group_owner_account_uuid"), table_name="security_group")
    op.drop_index(op.f("ix_security_group_name"), table_name="security_group")
    op.drop_table("security_group")
