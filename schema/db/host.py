"""Hosts: the machines VMs run on, in one cluster. State (what the admin wants: Enabled, Disabled,
PreMaintenance, Maintenance) is kept apart from status (what the connection is: Connecting,
Connected, Disconnected), as in ZStack."""

from __future__ import annotations

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from schema.db.base import UUID_LENGTH, Base, ResourceMixin


class Host(ResourceMixin, Base):
    __tablename__ = "host"
    resource_type = "host"
    __table_args__ = (
        # The database itself refuses an over-commit, whatever the code that reserves does.
        CheckConstraint("available_cpu >= 0 AND available_cpu <= total_cpu", name="cpu_capacity"),
        CheckConstraint(
            "available_memory_size >= 0 AND available_memory_size <= total_memory_size",
            name="memory_capacity",
        ),
    )

    zone_uuid: Mapped[str] = mapped_column(String(UUID_LENGTH), ForeignKey("zone.uuid"), index=True)
    cluster_uuid: Mapped[str] = mapped_column(String(UUID_LENGTH), ForeignKey("cluster.uuid"), index=True)
    hypervisor_type: Mapped[str] = mapped_column(String(32))  # KVM | Simulator
    # ZStack keeps management IPs unique across the whole installation.
    management_ip: Mapped[str] = mapped_column(String(255), unique=True)
    state: Mapped[str] = mapped_column(String(32), index=True)
    status: Mapped[str] = mapped_column(String(32), index=True)
    status_reason: Mapped[str | None] = mapped_column(Text)
    ssh_port: Mapped[int | None] = mapped_column(Integer)
    username: Mapped[str | None] = mapped_column(String(255))
    total_cpu: Mapped[int] = mapped_column(Integer, default=0)
    available_cpu: Mapped[int] = mapped_column(Integer, default=0)
    total_memory_size: Mapped[int] = mapped_column(BigInteger, default=0)
    available_memory_size: Mapped[int] = mapped_column(BigInteger, default=0)


class HostSecret(Base):
    """SSH credentials, in their own table so no query or inventory can reach them by accident.

    Stored as given: the agent deployment needs them in clear to log in (account passwords, by
    contrast, are hashed by the identity service).
    """

    __tablename__ = "host_secret"

    host_uuid: Mapped[str] = mapped_column(
        String(UUID_LENGTH), ForeignKey("host.uuid", ondelete="CASCADE"), primary_key=True
    )
    password: Mapped[str | None] = mapped_column(Text)
    ssh_key: Mapped[str | None] = mapped_column(Text)
