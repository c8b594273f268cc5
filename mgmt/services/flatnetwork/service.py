"""Flat networks (ZStack's ``FlatDhcpBackend``): on every host, per L3 network whose DHCP comes
from the ``Flat`` provider, a DHCP server holding the entries of that host's VM NICs only.

- The server's address is one address of the L3, the same on every host, taken from IPAM once
  (a used IP whose ``usedForUuid`` is the L3 itself) and kept while the L3 exists.
- Every push is the host's whole state (``agent.flat.apply_dhcp``), computed from the database,
  run on the host's owner node in the host's serial queue (``SyncFlatNetworkOnHost``).
- It reacts to events: a VM created, started, stopped, migrated, destroyed or changed re-syncs
  its current and last hosts; a host becoming Connected gets its whole state.

EIPs on L3s whose EIP service comes from ``Flat`` are realised on the VM's host too
(``agent.flat.apply_eip``, the host's whole EIP state, pushed in the same sync), so they follow the
VM through the same events. ``FlatEipBackend`` is the EIP service's way in: attaching, detaching
or disabling an EIP re-syncs the VM's host and fails if that push fails.

Not built yet: DNS beyond the DHCP options, userdata.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from bus.aio import AsyncBus, Consumer
from bus.envelope import Envelope
from bus.errors import RingstackError
from bus.topology import QueueSpec
from mgmt.cluster.owner import OwnerPath
from mgmt.core.agents import AgentClient
from mgmt.core.db import Database
from mgmt.core.extensions import ExtensionRegistry
from mgmt.core.service import CallContext, Service, handler
from mgmt.services.eip.backends import EipBackend, EipTarget
from mgmt.services.network.ipam import allocate_ip
from mgmt.services.securitygroup.state import connected
from mgmt.services.vm.specs import l2_spec
from schema.agent import (
    ApplyFlatDhcpCommand,
    ApplyFlatEipCommand,
    BridgeReply,
    EnsureBridgeCommand,
    FlatDhcpEntry,
    FlatDhcpL3Spec,
    FlatDhcpReply,
    FlatEipReply,
    FlatEipSpec,
    L2Spec,
)
from schema.api.base import EmptyReply, Event
from schema.api.flatnetwork import SyncFlatNetworkOnHost
from schema.db.eip import Eip
from schema.db.flatnetwork import FlatDhcpHostVm, FlatEipHost
from schema.db.host import Host
from schema.db.network import FLAT_PROVIDER_UUID, L2Network, L3Network, L3NetworkServiceRef, UsedIp
from schema.db.vm import VmInstance, VmNic
from schema.db.vrouter import Vip

log = logging.getLogger(__name__)

PUSH_TIMEOUT = 60.0
VM_ACTIONS = ("created", "state", "migrated", "destroyed", "recovered", "deleted", "updated")


def uplink(l2: L2Network, vni: int | None) -> str:
    """The bridge's port toward other hosts (what the agent's Bridges make)."""
    if l2.type == "L2VxlanNetwork":
        return f"vxlan{vni}"
    if l2.type == "L2VlanNetwork":
        return f"{l2.physical_interface}.{l2.vlan}"
    return l2.physical_interface


def dhcp_server_ip(session: Session, l3_uuid: str) -> str:
    ip = session.scalar(
        select(UsedIp.ip).where(UsedIp.l3_network_uuid == l3_uuid, UsedIp.used_for_uuid == l3_uuid)
    )
    if ip is None:
        ip = allocate_ip(session, l3_uuid, None, for_uuid=l3_uuid).ip
    return ip


def host_state(session: Session, host_uuid: str) -> tuple[ApplyFlatDhcpCommand, set[str]]:
    """The host's whole flat DHCP state, and the VMs it serves."""
    flat_l3s = select(L3NetworkServiceRef.l3_network_uuid).where(
        L3NetworkServiceRef.provider_uuid == FLAT_PROVIDER_UUID, L3NetworkServiceRef.service_type == "DHCP"
    )
    rows = session.execute(
        select(VmNic, VmInstance.default_l3_network_uuid)
        .join(VmInstance, VmInstance.uuid == VmNic.vm_instance_uuid)
        .where(VmInstance.host_uuid == host_uuid, VmNic.l3_network_uuid.in_(flat_l3s), VmNic.ip.is_not(None))
        .order_by(VmNic.l3_network_uuid, VmNic.mac)
    ).all()
    by_l3: dict[str, list[tuple[VmNic, str | None]]] = defaultdict(list)
    for nic, default_l3 in rows:
        by_l3[nic.l3_network_uuid].append((nic, default_l3))
    specs = []
    for l3_uuid, nics in sorted(by_l3.items()):
        l3 = session.get(L3Network, l3_uuid)
        l2 = session.get(L2Network, l3.l2_network_uuid) if l3 is not None else None
        if l3 is None or l2 is None:
            continue
        l2s = l2_spec(l2, session)
        first = nics[0][0]
        specs.append(
            FlatDhcpL3Spec(
                l3_network_uuid=l3_uuid,
                bridge_name=l2s.bridge_name,
                uplink=uplink(l2, l2s.vni),
                dhcp_server_ip=dhcp_server_ip(session, l3_uuid),
                netmask=first.netmask or "255.255.255.0",
                gateway=first.gateway,
                dns=list(l3.dns),
                dns_domain=l3.dns_domain,
                entries=[
                    FlatDhcpEntry(
                        mac=nic.mac,
                        ip=nic.ip or "",
                        hostname=f"vm-{nic.vm_instance_uuid[:12]}",
                        default=default_l3 in (None, nic.l3_network_uuid),
                    )
                    for nic, default_l3 in nics
                ],
            )
        )
    served = {nic.vm_instance_uuid for nics in by_l3.values() for nic, _ in nics}
    return ApplyFlatDhcpCommand(host_uuid=host_uuid, l3_networks=specs), served


def host_eips(session: Session, host_uuid: str) -> tuple[ApplyFlatEipCommand, list[L2Spec], set[str], bool]:
    """The host's whole flat EIP state, the public L2s it needs bridges of, the VMs they serve,
    and whether the host was last given any (so one that had some hears it has none)."""
    flat_l3s = select(L3NetworkServiceRef.l3_network_uuid).where(
        L3NetworkServiceRef.provider_uuid == FLAT_PROVIDER_UUID, L3NetworkServiceRef.service_type == "EIP"
    )
    rows = session.execute(
        select(Eip, VmNic, Vip)
        .join(VmNic, VmNic.uuid == Eip.vm_nic_uuid)
        .join(VmInstance, VmInstance.uuid == VmNic.vm_instance_uuid)
        .join(Vip, Vip.uuid == Eip.vip_uuid)
        .where(
            VmInstance.host_uuid == host_uuid,
            Eip.state == "Enabled",
            VmNic.l3_network_uuid.in_(flat_l3s),
            VmNic.ip.is_not(None),
        )
        .order_by(Eip.uuid)
    ).all()
    specs: list[FlatEipSpec] = []
    publics: dict[str, L2Spec] = {}
    vms: set[str] = set()
    for eip, nic, vip in rows:
        guest_l3 = session.get(L3Network, nic.l3_network_uuid)
        public_l3 = session.get(L3Network, vip.l3_network_uuid)
        if guest_l3 is None or public_l3 is None or not nic.gateway:
            log.warning("EIP %s: NIC %s has no gateway or L3; not applied", eip.uuid, nic.uuid)
            continue
        guest_l2 = session.get(L2Network, guest_l3.l2_network_uuid)
        public_l2 = session.get(L2Network, public_l3.l2_network_uuid)
        assert guest_l2 is not None and public_l2 is not None
        guest, public = l2_spec(guest_l2, session), l2_spec(public_l2, session)
        publics[public.uuid] = public
        vms.add(nic.vm_instance_uuid)
        specs.append(
            FlatEipSpec(
                eip_uuid=eip.uuid,
                vip_ip=vip.ip,
                vip_netmask=vip.netmask,
                vip_gateway=vip.gateway or None,
                public_bridge=public.bridge_name,
                guest_ip=nic.ip or "",
                guest_mac=nic.mac,
                guest_netmask=nic.netmask or "255.255.255.0",
                guest_gateway=nic.gateway,
                guest_bridge=guest.bridge_name,
                guest_uplink=uplink(guest_l2, guest.vni),
            )
        )
    had = session.scalar(select(FlatEipHost.eip_uuid).where(FlatEipHost.host_uuid == host_uuid).limit(1))
    cmd = ApplyFlatEipCommand(host_uuid=host_uuid, eips=specs)
    return cmd, list(publics.values()), vms, had is not None


def vm_hosts(session: Session, vm_uuid: str) -> list[str]:
    """The VM's host now and the hosts that last served it."""
    hosts = set(
        session.scalars(select(FlatDhcpHostVm.host_uuid).where(FlatDhcpHostVm.vm_instance_uuid == vm_uuid))
    )
    now = session.scalar(select(VmInstance.host_uuid).where(VmInstance.uuid == vm_uuid))
    if now is not None:
        hosts.add(now)
    return connected(session, hosts)


def eip_hosts(session: Session, eip_uuid: str) -> list[str]:
    """The connected hosts an EIP was last applied on."""
    return connected(
        session, set(session.scalars(select(FlatEipHost.host_uuid).where(FlatEipHost.eip_uuid == eip_uuid)))
    )


def record_served(
    session: Session, host_uuid: str, vm_uuids: set[str], eip_uuids: list[str] | None = None
) -> None:
    session.execute(delete(FlatDhcpHostVm).where(FlatDhcpHostVm.host_uuid == host_uuid))
    if session.get(Host, host_uuid) is not None:
        session.add_all(FlatDhcpHostVm(host_uuid=host_uuid, vm_instance_uuid=vm) for vm in sorted(vm_uuids))
    if eip_uuids is not None:  # None: EIPs not pushed this time, the record stands
        session.execute(delete(FlatEipHost).where(FlatEipHost.host_uuid == host_uuid))
        if session.get(Host, host_uuid) is not None:
            session.add_all(FlatEipHost(host_uuid=host_uuid, eip_uuid=e) for e in sorted(eip_uuids))


class FlatEipBackend:
    """EIPs of Flat L3s: the VM's host is re-synced (the database already says what is wanted)."""

    provider_type = "Flat"

    def __init__(self, service: FlatNetworkService) -> None:
        self.service = service

    async def apply(self, target: EipTarget) -> None:
        if target.host_uuid is not None:  # a VM not running anywhere gets it when it starts
            await self.service.sync(target.host_uuid)

    async def remove(self, target: EipTarget) -> None:
        hosts = await self.service.db.run(connected, [target.host_uuid] if target.host_uuid else [])
        for host in hosts:  # a host not connected now gets its whole state when it reconnects
            await self.service.sync(host)


class FlatNetworkService(Service):
    name = "flatnetwork"

    db: Database
    agents: AgentClient
    bus: AsyncBus
    owners: OwnerPath
    extensions: ExtensionRegistry

    async def start(self) -> None:
        backend: EipBackend = FlatEipBackend(self)
        self.extensions.register(EipBackend, backend)  # type: ignore[type-abstract]
        spec = self.bus.topology.event_queue(
            "flatnetwork", "vm.*.*", "host.*.status", "eip.*.deleted", durable=True
        )
        spec = QueueSpec(
            spec.name,
            durable=True,
            bindings=spec.bindings,
            arguments={"x-expires": 15 * 60 * 1000, "x-message-ttl": 10 * 60 * 1000},
        )
        self._consumer: Consumer | None = self.bus.consume(spec, self._on_event, prefetch=16)
        await self.bus.start_consumer(self._consumer)

    async def stop(self) -> None:
        if self._consumer is not None:
            await self.bus.cancel(self._consumer)

    async def sync(self, host: str) -> None:
        """Push the host's whole flat state, on its owner node in its serial queue."""
        await self.owners.call(
            "SyncFlatNetworkOnHost", {"hostUuid": host}, resource_uuid=host, timeout=PUSH_TIMEOUT
        )

    async def _push(self, hosts: list[str]) -> None:
        async def one(host: str) -> None:
            try:
                await self.sync(host)
            except RingstackError as exc:  # the host's next sync (reconnect, next VM event) retries
                log.warning("flat DHCP of host %s not applied: %s", host, exc)

        await asyncio.gather(*(one(h) for h in hosts))

    async def _on_event(self, env: Envelope) -> None:
        try:
            event = Event.from_wire(env.body)
        except ValueError:
            return
        if event.resource_type == "host":
            if (event.inventory or {}).get("status") == "Connected":
                await self._push(await self.db.run(connected, [event.resource_uuid]))
            return
        if event.resource_type == "eip":  # deleted behind the EIP service's back (a cascade)
            await self._push(await self.db.run(eip_hosts, event.resource_uuid))
            return
        if event.resource_type == "vm" and event.action in VM_ACTIONS:
            await self._push(await self.db.run(vm_hosts, event.resource_uuid))

    @handler(SyncFlatNetworkOnHost)
    async def sync_host(self, msg: SyncFlatNetworkOnHost, ctx: CallContext) -> EmptyReply:
        cmd, vms = await self.db.run(host_state, msg.host_uuid)
        eips, publics, eip_vms, had_eips = await self.db.run(host_eips, msg.host_uuid)
        await self.agents.call(cmd, FlatDhcpReply, timeout=PUSH_TIMEOUT)
        pushed: list[str] | None = None
        if eips.eips or had_eips:
            for l2 in publics:  # the VIP's side: the public network's bridge on this host
                await self.agents.call(
                    EnsureBridgeCommand(host_uuid=msg.host_uuid, l2=l2), BridgeReply, timeout=PUSH_TIMEOUT
                )
            await self.agents.call(eips, FlatEipReply, timeout=PUSH_TIMEOUT)
            pushed = [e.eip_uuid for e in eips.eips]
        await self.db.run(record_served, msg.host_uuid, vms | eip_vms, pushed)
        return EmptyReply()
