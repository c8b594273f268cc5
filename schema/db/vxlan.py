"""VXLAN: a pool (an ``l2_network`` row of type ``L2VxlanNetworkPool``) with its VNI ranges, and
the VXLAN networks made from it (``l2_network`` rows of type ``L2VxlanNetwork`` plus their VNI
here). A host's VTEP address is its management IP (ZStack picks the host's address in a per-cluster
VTEP CIDR; that choice is not built yet)."""

from __future__ import annotations

from sqlalchemy import ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from schema.db.base import UUID_LENGTH, Base, ResourceMixin


class VniRange(ResourceMixin, Base):
    __tablename__ = "vni_range"
    resource_type = "vni_range"

    l2_network_uuid: Mapped[str] = mapped_column(
        String(UUID_LENGTH), ForeignKey("l2_network.uuid", ondelete="CASCADE"), index=True
    )
    start_vni: Mapped[int] = mapped_column(Integer)
    end_vni: Mapped[int] = mapped_column(Integer)


class L2VxlanNetwork(Base):
    __tablename__ = "l2_vxlan_network"
    __table_args__ = (UniqueConstraint("pool_uuid", "vni"),)

    uuid: Mapped[str] = mapped_column(
        String(UUID_LENGTH), ForeignKey("l2_network.uuid", ondelete="CASCADE"), primary_key=True
    )
    # No cascade: a pool with networks is refused deletion (L2.POOL_IN_USE), never emptied behind them.
    pool_uuid: Mapped[str] = mapped_column(String(UUID_LENGTH), ForeignKey("l2_network.uuid"), index=True)
    vni: Mapped[int] = mapped_column(Integer)
