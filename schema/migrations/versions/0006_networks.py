"""networks (L2, L3, IP ranges, IPAM, DNS, network services)

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# Fixed uuids of the seeded providers (schema/db/network.py names them too).
PROVIDERS = (
    (
        "1be7aee8b56d5b9b9c765780604b7755",
        "VirtualRouter",
        "virtual router appliance VMs",
        ("DHCP", "DNS", "SNAT", "EIP", "PortForwarding", "LoadBalancer"),
    ),
    ("cad864e9d0565b79a3d4bebee541d6cd", "Flat", "flat networking on the hosts", ("DHCP", "DNS", "EIP", "Userdata")),
    ("3bba6298f0b7543b90f448801e5d7815", "SecurityGroup", "security groups on the hosts", ("SecurityGroup",)),
)


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


def _resource_indexes(table: str) -> None:
    op.create_index(op.f(f"ix_{table}_name"), table, ["name"], unique=False)
    op.create_index(op.f(f"ix_{table}_owner_account_uuid"), table, ["owner_account_uuid"], unique=False)


def upgrade() -> None:
    op.create_table(
        "l2_network",
        *_resource_columns(),
        sa.Column("zone_uuid", sa.String(length=32), nullable=False),
        sa.Column("type", sa.String(length=32), nullable=False),
        sa.Column("physical_interface", sa.String(length=64), nullable=False),
        sa.Column("vlan", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["zone_uuid"], ["zone.uuid"], name=op.f("fk_l2_network_zone_uuid_zone")),
        sa.PrimaryKeyConstraint("uuid", name=op.f("pk_l2_network")),
        sa.UniqueConstraint(
            "zone_uuid", "physical_interface", "vlan", name=op.f("uq_l2_network_zone_uuid_physical_interface_vlan")
        ),
    )
    _resource_indexes("l2_network")
    op.create_index(op.f("ix_l2_network_zone_uuid"), "l2_network", ["zone_uuid"], unique=False)
    op.create_index(op.f("ix_l2_network_type"), "l2_network", ["type"], unique=False)

    op.create_table(
        "l2_network_cluster_ref",
        sa.Column("l2_network_uuid", sa.String(length=32), nullable=False),
        sa.Column("cluster_uuid", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(
            ["l2_network_uuid"],
            ["l2_network.uuid"],
            name=op.f("fk_l2_network_cluster_ref_l2_network_uuid_l2_network"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["cluster_uuid"],
            ["cluster.uuid"],
            name=op.f("fk_l2_network_cluster_ref_cluster_uuid_cluster"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("l2_network_uuid", "cluster_uuid", name=op.f("pk_l2_network_cluster_ref")),
    )
    op.create_index(
        op.f("ix_l2_network_cluster_ref_cluster_uuid"), "l2_network_cluster_ref", ["cluster_uuid"], unique=False
    )

    op.create_table(
        "l3_network",
        *_resource_columns(),
        sa.Column("l2_network_uuid", sa.String(length=32), nullable=False),
        sa.Column("zone_uuid", sa.String(length=32), nullable=False),
        sa.Column("type", sa.String(length=32), nullable=False),
        sa.Column("state", sa.String(length=32), nullable=False),
        sa.Column("category", sa.String(length=32), nullable=False),
        sa.Column("system", sa.Boolean(), nullable=False),
        sa.Column("dns_domain", sa.String(length=255), nullable=True),
        sa.ForeignKeyConstraint(
            ["l2_network_uuid"], ["l2_network.uuid"], name=op.f("fk_l3_network_l2_network_uuid_l2_network")
        ),
        sa.ForeignKeyConstraint(["zone_uuid"], ["zone.uuid"], name=op.f("fk_l3_network_zone_uuid_zone")),
        sa.PrimaryKeyConstraint("uuid", name=op.f("pk_l3_network")),
    )
    _resource_indexes("l3_network")
    op.create_index(op.f("ix_l3_network_l2_network_uuid"), "l3_network", ["l2_network_uuid"], unique=False)
    op.create_index(op.f("ix_l3_network_zone_uuid"), "l3_network", ["zone_uuid"], unique=False)
    op.create_index(op.f("ix_l3_network_state"), "l3_network", ["state"], unique=False)
    op.create_index(op.f("ix_l3_network_category"), "l3_network", ["category"], unique=False)

    op.create_table(
        "l3_network_dns",
        sa.Column("l3_network_uuid", sa.String(length=32), nullable=False),
        sa.Column("dns", sa.String(length=64), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["l3_network_uuid"],
            ["l3_network.uuid"],
            name=op.f("fk_l3_network_dns_l3_network_uuid_l3_network"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("l3_network_uuid", "dns", name=op.f("pk_l3_network_dns")),
    )

    op.create_table(
        "ip_range",
        *_resource_columns(),
        sa.Column("l3_network_uuid", sa.String(length=32), nullable=False),
        sa.Column("start_ip", sa.String(length=64), nullable=False),
        sa.Column("end_ip", sa.String(length=64), nullable=False),
        sa.Column("netmask", sa.String(length=64), nullable=False),
        sa.Column("gateway", sa.String(length=64), nullable=False),
        sa.Column("network_cidr", sa.String(length=64), nullable=False),
        sa.Column("prefix_len", sa.Integer(), nullable=False),
        sa.Column("ip_version", sa.Integer(), nullable=False),
        sa.Column("start_int", sa.BigInteger(), nullable=False),
        sa.Column("end_int", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["l3_network_uuid"], ["l3_network.uuid"], name=op.f("fk_ip_range_l3_network_uuid_l3_network")
        ),
        sa.PrimaryKeyConstraint("uuid", name=op.f("pk_ip_range")),
    )
    _resource_indexes("ip_range")
    op.create_index(op.f("ix_ip_range_l3_network_uuid"), "ip_range", ["l3_network_uuid"], unique=False)

    op.create_table(
        "used_ip",
        sa.Column("uuid", sa.String(length=32), nullable=False),
        sa.Column("l3_network_uuid", sa.String(length=32), nullable=False),
        sa.Column("ip_range_uuid", sa.String(length=32), nullable=False),
        sa.Column("ip", sa.String(length=64), nullable=False),
        sa.Column("ip_int", sa.BigInteger(), nullable=False),
        sa.Column("gateway", sa.String(length=64), nullable=False),
        sa.Column("netmask", sa.String(length=64), nullable=False),
        sa.Column("owner_account_uuid", sa.String(length=32), nullable=True),
        sa.Column("used_for_uuid", sa.String(length=32), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(
            ["l3_network_uuid"], ["l3_network.uuid"], name=op.f("fk_used_ip_l3_network_uuid_l3_network")
        ),
        sa.ForeignKeyConstraint(["ip_range_uuid"], ["ip_range.uuid"], name=op.f("fk_used_ip_ip_range_uuid_ip_range")),
        sa.PrimaryKeyConstraint("uuid", name=op.f("pk_used_ip")),
        # The proof that no address is handed out twice on one L3 network.
        sa.UniqueConstraint("l3_network_uuid", "ip", name=op.f("uq_used_ip_l3_network_uuid_ip")),
    )
    op.create_index(op.f("ix_used_ip_ip_range_uuid"), "used_ip", ["ip_range_uuid"], unique=False)
    op.create_index(op.f("ix_used_ip_owner_account_uuid"), "used_ip", ["owner_account_uuid"], unique=False)
    op.create_index(op.f("ix_used_ip_used_for_uuid"), "used_ip", ["used_for_uuid"], unique=False)

    provider = op.create_table(
        "network_service_provider",
        *_resource_columns(),
        sa.Column("type", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("uuid", name=op.f("pk_network_service_provider")),
        sa.UniqueConstraint("type", name=op.f("uq_network_service_provider_type")),
    )
    _resource_indexes("network_service_provider")

    service_type = op.create_table(
        "network_service_type",
        sa.Column("provider_uuid", sa.String(length=32), nullable=False),
        sa.Column("service_type", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["provider_uuid"],
            ["network_service_provider.uuid"],
            name=op.f("fk_network_service_type_provider_uuid_network_service_provider"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("provider_uuid", "service_type", name=op.f("pk_network_service_type")),
    )

    op.create_table(
        "l3_network_service",
        sa.Column("l3_network_uuid", sa.String(length=32), nullable=False),
        sa.Column("service_type", sa.String(length=64), nullable=False),
        sa.Column("provider_uuid", sa.String(length=32), nullable=False),
        sa.ForeignKeyConstraint(
            ["l3_network_uuid"],
            ["l3_network.uuid"],
            name=op.f("fk_l3_network_service_l3_network_uuid_l3_network"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["provider_uuid", "service_type"],
            ["network_service_type.provider_uuid", "network_service_type.service_type"],
            name=op.f("fk_l3_network_service_provider_uuid_network_service_type"),
        ),
        sa.PrimaryKeyConstraint("l3_network_uuid", "service_type", name=op.f("pk_l3_network_service")),
    )
    op.create_index(op.f("ix_l3_network_service_provider_uuid"), "l3_network_service", ["provider_uuid"], unique=False)

    op.bulk_insert(
        provider,
        [
            {"uuid": uuid, "name": name, "description": description, "type": name, "version": 1}
            for uuid, name, description, _ in PROVIDERS
        ],
    )
    op.bulk_insert(
        service_type,
        [{"provider_uuid": uuid, "service_type": t} for uuid, _, _, types in PROVIDERS for t in types],
    )


def downgrade() -> None:
    op.drop_table("l3_network_service")
    op.drop_table("network_service_type")
    op.drop_table("network_service_provider")
    op.drop_table("used_ip")
    op.drop_table("ip_range")
    op.drop_table("l3_network_dns")
    op.drop_table("l3_network")
    op.drop_table("l2_network_cluster_ref")
    op.drop_table("l2_network")
