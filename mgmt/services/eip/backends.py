"""The seam between the EIP service and the providers that realise EIPs (Flat: NAT on the VM's
host; VirtualRouter: NAT on the L3's router).

A provider implements ``EipBackend`` and registers one instance when its service starts::

    extensions.register(EipBackend, MyEipBackend(...))

The EIP service picks the backend whose ``provider_type`` is the type of the provider that gives
the NIC's L3 network its ``EIP`` service (``L3NetworkServiceRef``), so a backend only ever sees
EIPs on NICs of L3s that use it.

Contract:

- When ``apply`` or ``remove`` is called, the database already says what is wanted (``apply``:
  the EIP is attached to ``target.nic_uuid`` and Enabled; ``remove``: it no longer is), so a
  backend that pushes whole desired state computed from the database may do just that.
- Both are idempotent and may be called again with the same target (a retried request).
- ``apply`` raising fails the API call: the EIP service puts the database back and calls
  ``remove`` with the same target, which must tolerate a partial ``apply``. ``remove`` raising
  likewise puts the attachment back and calls ``apply``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from mgmt.core.extensions import ExtensionRegistry


@dataclass(frozen=True)
class EipTarget:
    """One EIP mapped onto one NIC: all a provider needs, read in one transaction."""

    eip_uuid: str
    vip_uuid: str
    vip_ip: str
    vip_l3_uuid: str
    nic_uuid: str
    nic_mac: str
    guest_ip: str
    nic_l3_uuid: str
    vm_uuid: str
    host_uuid: str | None  # where the VM runs now (None: not running anywhere)
    provider_type: str  # of the NIC's L3 EIP provider ("Flat", "VirtualRouter", ...)


class EipBackend(Protocol):
    provider_type: str

    async def apply(self, target: EipTarget) -> None:
        """Make inbound traffic to ``vip_ip`` reach ``guest_ip`` and the NIC's outbound leave
        from ``vip_ip``."""

    async def remove(self, target: EipTarget) -> None:
        """Undo ``apply`` for this target (nothing there: succeed)."""


def backend_for(extensions: ExtensionRegistry, provider_type: str) -> EipBackend | None:
    for backend in extensions.get(EipBackend):  # type: ignore[type-abstract]
        if backend.provider_type == provider_type:
            return backend
    return None
