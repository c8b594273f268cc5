"""The management cluster's own state: members, partition ownership, and durable API jobs."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Boolean, DateTime, Float, Index, Integer, String, Text, func
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from schema.db.base import UUID_LENGTH, Base


class ManagementNodeRecord(Base):
    """One management node. ``lease_expires_at`` is the node's lease on every partition it owns:
    renewed by its heartbeat, and only once it has passed may another node take them over."""

    __tablename__ = "management_node"

    uuid: Mapped[str] = mapped_column(String(UUID_LENGTH), primary_key=True)
    address: Mapped[str] = mapped_column(String(255))
    state: Mapped[str] = mapped_column(String(16), index=True)  # alive | dead | left
    joined_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    last_heartbeat: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    lease_expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


# ClusterMeta and RingPartition are read and written by hand-written SQL (mgmt/cluster: the
# ownership UPDATEs must be single conditional statements); no code uses these classes. They stay
# because they declare the tables to Alembic: without them autogenerate proposes dropping both.


class ClusterMeta(Base):
    """A single row: the membership epoch (bumped by every join, leave and eviction) and the number
    of ring partitions, which every node must agree on."""

    __tablename__ = "cluster_meta"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    epoch: Mapped[int] = mapped_column(BigInteger)
    partitions: Mapped[int] = mapped_column(Integer)


class RingPartition(Base):
    """Who holds each partition, and the fencing token bumped at every change of holder."""

    __tablename__ = "ring_partition"

    partition: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    owner_node_uuid: Mapped[str | None] = mapped_column(String(UUID_LENGTH), index=True)
    token: Mapped[int] = mapped_column(BigInteger, default=0)


class Job(Base):
    """A mutating API request, recorded before any work starts, so that it survives its node."""

    __tablename__ = "job"
    __table_args__ = (Index("ix_job_partition_state", "partition", "state"),)

    uuid: Mapped[str] = mapped_column(String(UUID_LENGTH), primary_key=True)  # the request id
    name: Mapped[str] = mapped_column(String(128), index=True)
    resource_uuid: Mapped[str] = mapped_column(String(UUID_LENGTH), index=True)
    partition: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), index=True)  # pending running succeeded failed cancelled
    body: Mapped[dict[str, Any]] = mapped_column(JSONB)
    owner_account_uuid: Mapped[str] = mapped_column(String(UUID_LENGTH), index=True)
    account: Mapped[dict[str, Any]] = mapped_column(JSONB)
    reply_to: Mapped[str | None] = mapped_column(String(255))
    deadline: Mapped[float | None] = mapped_column(Float)
    node_uuid: Mapped[str | None] = mapped_column(String(UUID_LENGTH))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    replied: Mapped[bool] = mapped_column(Boolean, default=False)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    description: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now(), index=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now(), onupdate=func.now())
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
