"""The seam every network service provider plugs into (VirtualRouter, Flat, ...): a strategy per
provider type, hooked into VM instantiation through ``VmInstantiateExtension``.

A provider subclasses ``ProviderExtension``, names its ``provider_type`` (the ``type`` of its
``network_service_provider`` row) and implements ``apply``/``revoke``; it registers one instance
with ``extensions.register(VmInstantiateExtension, ...)`` when its service starts. The base class
finds, in one query, which of the VM's NICs are on L3 networks taking services from that provider
type and which services each takes (``L3NetworkServiceRef``), and calls the provider only for those
NICs: a provider never sees a NIC whose L3 does not use it, and an L3 uses one provider per service
type (the database says so). Appliance VMs (a virtual router: a ``virtual_router_vm`` row) are
no provider's business: their NICs are configured from their own boot data and they are the
service. ``apply`` raising fails the VM create, which rolls back (``revoke``
runs for every provider that applied, in reverse order, as the flow chain undoes its steps).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from mgmt.core.db import Database
from mgmt.services.vm.create import VmInstantiateExtension
from mgmt.services.vm.plan import CreatePlan, NicPlan
from schema.db.network import L3NetworkServiceRef, NetworkServiceProvider
from schema.db.vrouter import VirtualRouterVm


@dataclass(frozen=True)
class NicServices:
    nic: NicPlan
    services: frozenset[str]  # the service types (DHCP, DNS, SNAT, EIP, ...) its L3 takes from us


def services_from(session: Session, provider_type: str, l3_uuids: Sequence[str]) -> dict[str, frozenset[str]]:
    """L3 uuid -> the service types it takes from providers of ``provider_type`` (L3s taking none
    are left out)."""
    rows = session.execute(
        select(L3NetworkServiceRef.l3_network_uuid, L3NetworkServiceRef.service_type)
        .join(NetworkServiceProvider, NetworkServiceProvider.uuid == L3NetworkServiceRef.provider_uuid)
        .where(
            NetworkServiceProvider.type == provider_type, L3NetworkServiceRef.l3_network_uuid.in_(l3_uuids)
        )
    )
    out: dict[str, set[str]] = {}
    for l3_uuid, service_type in rows:
        out.setdefault(l3_uuid, set()).add(service_type)
    return {l3: frozenset(types) for l3, types in out.items()}


def _served(
    session: Session, provider_type: str, l3_uuids: Sequence[str], vm_uuid: str
) -> tuple[dict[str, frozenset[str]], bool]:
    served = services_from(session, provider_type, l3_uuids)
    return served, bool(served) and session.get(VirtualRouterVm, vm_uuid) is not None


class ProviderExtension(VmInstantiateExtension):
    provider_type: ClassVar[str]

    def __init__(self, db: Database) -> None:
        self.db = db

    async def nics_served(self, plan: CreatePlan) -> list[NicServices]:
        l3s = sorted({nic.l3_uuid for nic in plan.nics})
        if not l3s:
            return []
        served, appliance = await self.db.run(_served, self.provider_type, l3s, plan.vm_uuid)
        if appliance:
            return []
        return [NicServices(nic, served[nic.l3_uuid]) for nic in plan.nics if nic.l3_uuid in served]

    async def pre_instantiate(self, plan: CreatePlan) -> None:
        nics = await self.nics_served(plan)
        if nics:
            await self.apply(plan, nics)

    async def release(self, plan: CreatePlan) -> None:
        nics = await self.nics_served(plan)
        if nics:
            await self.revoke(plan, nics)

    async def apply(self, plan: CreatePlan, nics: list[NicServices]) -> None:
        """Give ``nics`` their services before the VM starts (a DHCP entry, a VR to route them)."""

    async def revoke(self, plan: CreatePlan, nics: list[NicServices]) -> None:
        """Undo ``apply`` (the create is rolling back); must tolerate a partial ``apply``."""
