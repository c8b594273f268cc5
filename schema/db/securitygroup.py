"""Security groups: groups, their rules, their L3 attachments, the VM NICs in them, and what was
last applied on each host.

Child and reference rows cascade at the database level: deleting a group removes its rules, its
L3 and NIC references, and the rules of other groups naming it as remote (as ZStack does); a NIC
or an L3 network being deleted drops its references, without the VM or network services knowing
this plugin exists.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, ForeignKey, Integer, String, Text, UniqueConstraint, func
from sqlalchemy.orm import Mapped, mapped_column, relationship

from schema.db.base import UUID_LENGTH, Base, ResourceMixin


class SecurityGroupRule(Base):
    __tablename__ = "security_group_rule"

    uuid: Mapped[str] = mapped_column(String(UUID_LENGTH), primary_key=True)
    security_group_uuid: Mapped[str] = mapped_column(
        String(UUID_LENGTH), ForeignKey("security_group.uuid", ondelete="CASCADE"), index=True
    )
    type: Mapped[str] = mapped_column(String(16))  # Ingress | Egress
    protocol: Mapped[str] = mapped_column(String(8))  # TCP | UDP | ICMP | ALL
    start_port: Mapped[int | None] = mapped_column(Integer)
    end_port: Mapped[int | None] = mapped_column(Integer)
    allowed_cidr: Mapped[str | None] = mapped_column(String(64))
    remote_security_group_uuid: Mapped[str | None] = mapped_column(
        String(UUID_LENGTH), ForeignKey("security_group.uuid", ondelete="CASCADE"), index=True
    )
    owner_account_uuid: Mapped[str | None] = mapped_column(String(UUID_LENGTH), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class SecurityGroupL3NetworkRef(Base):
    __tablename__ = "security_group_l3_network_ref"
    __table_args__ = (UniqueConstraint("security_group_uuid", "l3_network_uuid"),)

    uuid: Mapped[str] = mapped_column(String(UUID_LENGTH), primary_key=True)
    security_group_uuid: Mapped[str] = mapped_column(
        String(UUID_LENGTH), ForeignKey("security_group.uuid", ondelete="CASCADE"), index=True
    )
    l3_network_uuid: Mapped[str] = mapped_column(
        String(UUID_LENGTH), ForeignKey("l3_network.uuid", ondelete="CASCADE"), index=True
    )
    owner_account_uuid: Mapped[str | None] = mapped_column(String(UUID_LENGTH), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class VmNicSecurityGroupRef(Base):
    __tablename__ = "vm_nic_security_group_ref"
    __table_args__ = (UniqueConstraint("vm_nic_uuid", "security_group_uuid"),)

    uuid: Mapped[str] = mapped_column(String(UUID_LENGTH), primary_key=True)
    vm_nic_uuid: Mapped[str] = mapped_column(
        String(UUID_LENGTH), ForeignKey("vm_nic.uuid", ondelete="CASCADE"), index=True
    )
    vm_instance_uuid: Mapped[str] = mapped_column(String(UUID_LENGTH), index=True)
    security_group_uuid: Mapped[str] = mapped_column(
        String(UUID_LENGTH), ForeignKey("security_group.uuid", ondelete="CASCADE"), index=True
    )
    owner_account_uuid: Mapped[str | None] = mapped_column(String(UUID_LENGTH), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class SecurityGroup(ResourceMixin, Base):
    __tablename__ = "security_group"
    resource_type = "security_group"

    state: Mapped[str] = mapped_column(String(32), default="Enabled")

    rule_rows: Mapped[list[SecurityGroupRule]] = relationship(
        viewonly=True,
        primaryjoin="SecurityGroup.uuid == SecurityGroupRule.security_group_uuid",
        order_by=SecurityGroupRule.created_at,
    )
    l3_rows: Mapped[list[SecurityGroupL3NetworkRef]] = relationship(
        viewonly=True, order_by=SecurityGroupL3NetworkRef.created_at
    )

    @property
    def rules(self) -> list[SecurityGroupRule]:
        return list(self.rule_rows)

    @property
    def attached_l3_network_uuids(self) -> list[str]:
        return [row.l3_network_uuid for row in self.l3_rows]


class SecurityGroupHostNic(Base):
    """A NIC's rules as last applied on a host, one row per group: which hosts to tell when the NIC
    leaves (deleted, migrated away, out of its groups) after its own rows are gone."""

    __tablename__ = "security_group_host_nic"

    host_uuid: Mapped[str] = mapped_column(
        String(UUID_LENGTH), ForeignKey("host.uuid", ondelete="CASCADE"), primary_key=True
    )
    vm_nic_uuid: Mapped[str] = mapped_column(String(UUID_LENGTH), primary_key=True, index=True)
    security_group_uuid: Mapped[str] = mapped_column(String(UUID_LENGTH), primary_key=True, index=True)
    vm_instance_uuid: Mapped[str] = mapped_column(String(UUID_LENGTH), index=True)


class SecurityGroupFailedHost(Base):
    """A host whose last push failed: its desired state is in the tables above; the next sync (a
    retry, a reconnect, any later change on it) applies it."""

    __tablename__ = "security_group_failed_host"

    host_uuid: Mapped[str] = mapped_column(
        String(UUID_LENGTH), ForeignKey("host.uuid", ondelete="CASCADE"), primary_key=True
    )
    error: Mapped[str] = mapped_column(Text)
    failed_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )
