"""What the network services share: resource kinds, inventories, row deletion, cascade rules.

Cascade tree (``mgmt.core.cascade``): zone -> l2_network -> l3_network -> ip_range, and
``used_ip`` under both l3_network and ip_range. An L3 network's ranges are part of its
configuration: they go with it in both modes (``vetoes=()``). Allocated addresses (``used_ip``, not
a resource: no events) block a Permissive deletion of their L3 or range and go in Enforcing mode.
DNS and service rows go with their L3, cluster attachments with their L2 (foreign keys cascade).
The rules run in the caller's transaction, so a zone deleted Enforcing takes all of it in one
commit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, selectinload

from mgmt.core.cascade import CascadeRule
from schema.api.network import IpRangeInventory, L2NetworkInventory, L3NetworkInventory
from schema.db.network import IpRange, L2Network, L3Network, NetworkServiceProvider, UsedIp

L2_KIND = "l2_network"
L3_KIND = "l3_network"
RANGE_KIND = "ip_range"
USED_IP_KIND = "used_ip"

T = TypeVar("T")

# Query bases that load what inventories show for a whole page at once (one query per
# relationship), where touching the lazy relationships row by row would cost a query each.
L2_PAGE = select(L2Network).options(selectinload(L2Network.cluster_refs))
L3_PAGE = select(L3Network).options(
    selectinload(L3Network.range_rows), selectinload(L3Network.dns_rows), selectinload(L3Network.service_rows)
)
PROVIDER_PAGE = select(NetworkServiceProvider).options(selectinload(NetworkServiceProvider.type_rows))


def reloaded(session: Session, row: T) -> T:
    """Flush, then forget the row's loaded state so the next read (and its view-only
    relationships: ranges, DNS, services, clusters) reflects this transaction's changes."""
    session.flush()
    session.expire(row)
    return row


def l2_inventory(row: L2Network) -> L2NetworkInventory:
    return L2NetworkInventory.model_validate(row, from_attributes=True)


def l3_inventory(row: L3Network) -> L3NetworkInventory:
    return L3NetworkInventory.model_validate(row, from_attributes=True)


def range_inventory(row: IpRange) -> IpRangeInventory:
    return IpRangeInventory.model_validate(row, from_attributes=True)


# ---------------------------------------------------------------- row deletion


def delete_ranges(session: Session, uuids: Sequence[str]) -> None:
    session.execute(delete(UsedIp).where(UsedIp.ip_range_uuid.in_(uuids)))
    session.execute(delete(IpRange).where(IpRange.uuid.in_(uuids)))


def delete_l3s(session: Session, uuids: Sequence[str]) -> None:
    session.execute(delete(UsedIp).where(UsedIp.l3_network_uuid.in_(uuids)))
    session.execute(delete(IpRange).where(IpRange.l3_network_uuid.in_(uuids)))
    session.execute(delete(L3Network).where(L3Network.uuid.in_(uuids)))


def delete_used_ips(session: Session, uuids: Sequence[str]) -> None:
    session.execute(delete(UsedIp).where(UsedIp.uuid.in_(uuids)))


def delete_l2s(session: Session, uuids: Sequence[str]) -> None:
    session.execute(delete(L2Network).where(L2Network.uuid.in_(uuids)))


# ---------------------------------------------------------------- cascade rules


def lock_l2s(session: Session, *conditions: Any) -> list[str]:
    """Lock L2 rows before deleting anything under them: AddIpRange locks the L2 first and then
    touches the L3, so a deletion that took the L3 first and the L2 last could deadlock with it."""
    return list(session.scalars(select(L2Network.uuid).where(*conditions).with_for_update()))


def _l2_children(session: Session, parent_kind: str, uuids: Sequence[str]) -> list[str]:
    return lock_l2s(session, L2Network.zone_uuid.in_(uuids))


def _l3_children(session: Session, parent_kind: str, uuids: Sequence[str]) -> list[str]:
    return list(session.scalars(select(L3Network.uuid).where(L3Network.l2_network_uuid.in_(uuids))))


def _range_children(session: Session, parent_kind: str, uuids: Sequence[str]) -> list[str]:
    return list(session.scalars(select(IpRange.uuid).where(IpRange.l3_network_uuid.in_(uuids))))


def _used_ip_children(session: Session, parent_kind: str, uuids: Sequence[str]) -> list[str]:
    column = UsedIp.l3_network_uuid if parent_kind == L3_KIND else UsedIp.ip_range_uuid
    return list(session.scalars(select(UsedIp.uuid).where(column.in_(uuids))))


L2_RULE = CascadeRule(kind=L2_KIND, parents=("zone",), children_of=_l2_children, delete=delete_l2s)
L3_RULE = CascadeRule(kind=L3_KIND, parents=(L2_KIND,), children_of=_l3_children, delete=delete_l3s)
RANGE_RULE = CascadeRule(
    kind=RANGE_KIND, parents=(L3_KIND,), children_of=_range_children, delete=delete_ranges, vetoes=()
)
USED_IP_RULE = CascadeRule(
    kind=USED_IP_KIND,
    parents=(L3_KIND, RANGE_KIND),
    children_of=_used_ip_children,
    delete=delete_used_ips,
    resource=False,
)
