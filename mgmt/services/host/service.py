"""Hosts: add (KVM, simulator), reconnect, change state, update, delete (with cascade), query.

Admin only. SSH secrets go to ``host_secret`` and nowhere else: not in inventories, events or
logs (the API models hold them as ``SecretStr``, whose repr is masked).

AddKVMHost stores the host (Connecting), then deploys its agent over SSH (``connect.connect_kvm``):
Connected with the CPU and memory its agent reports, or Disconnected with the failed step and the
reason in the status reason, and an error reply (``HOST.DEPLOY_FAILED``) naming them; the host
stays, so the operator can fix its credentials (UpdateKVMHost) and ReconnectHost it. DeleteHost
also removes a KVM host's broker user and agent queue (best-effort).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from pydantic import SecretStr
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from bus.aio import AsyncBus
from bus.errors import RingstackError, Sys, not_found
from mgmt.config import NodeConfig
from mgmt.core.access import load_visible
from mgmt.core.agents import AgentClient
from mgmt.core.brokeradmin import BrokerAdmin
from mgmt.core.cascade import CascadeRegistry, CascadeRule, announce_deleted
from mgmt.core.db import Database, create_guard
from mgmt.core.events import EventPublisher
from mgmt.core.garbage import GarbageCollector
from mgmt.core.hostdeploy import delete_agent_queue
from mgmt.core.query import QueryTarget, Relation, run_query
from mgmt.core.service import CallContext, Service, handler
from mgmt.services.host.connect import ConnectResult, KvmLogin, connect_kvm, connect_simulator
from mgmt.services.host.errors import HostError
from mgmt.services.host.states import api_steps, next_state
from mgmt.services.vm.reconcile import Drift, reconcile_host
from schema.api.base import EmptyReply, QueryReply
from schema.api.host import (
    AddKVMHost,
    AddSimulatorHost,
    ChangeHostState,
    DeleteHost,
    HostInventory,
    HostReply,
    QueryHost,
    ReconnectHost,
    UpdateHost,
    UpdateKVMHost,
)
from schema.db.cluster import Cluster
from schema.db.host import Host, HostSecret
from schema.db.vm import VmInstance
from schema.db.zone import Zone

QUERY = QueryTarget.for_model(
    Host,
    HostInventory,
    name="host",
    relations={
        "zone": Relation("zone", Host.zone_uuid, Zone.uuid),
        "cluster": Relation("cluster", Host.cluster_uuid, Cluster.uuid),
        "vmInstance": Relation("vmInstance", Host.uuid, VmInstance.host_uuid),
    },
)

log = logging.getLogger(__name__)


def _inventory(host: Host) -> HostInventory:
    return HostInventory.model_validate(host, from_attributes=True)


def _secret(value: SecretStr | None) -> str | None:
    return None if value is None else value.get_secret_value()


def _hosts_of(session: Session, parent_kind: str, cluster_uuids: Sequence[str]) -> list[str]:
    return list(session.scalars(select(Host.uuid).where(Host.cluster_uuid.in_(cluster_uuids))))


def _delete_hosts(session: Session, uuids: Sequence[str]) -> None:
    # host_secret rows go with them (ON DELETE CASCADE).
    session.execute(delete(Host).where(Host.uuid.in_(uuids)))


HOST_RULE = CascadeRule("host", ("cluster",), _hosts_of, _delete_hosts)


def _ip_in_use(ip: str) -> RingstackError:
    return RingstackError(
        HostError.MANAGEMENT_IP_IN_USE,
        f"another host already has management IP {ip}",
        details={"managementIp": ip},
    )


def _check_ip_free(session: Session, ip: str, except_uuid: str | None = None) -> None:
    stmt = select(Host.uuid).where(Host.management_ip == ip)
    if except_uuid is not None:
        stmt = stmt.where(Host.uuid != except_uuid)
    if session.scalars(stmt).first() is not None:
        raise _ip_in_use(ip)


def _kvm_login(session: Session, uuid: str) -> KvmLogin:
    host = session.get(Host, uuid)
    if host is None:
        raise not_found("host", uuid)
    secret = session.get(HostSecret, uuid)
    return KvmLogin(
        ip=host.management_ip,
        port=host.ssh_port or 22,
        username=host.username or "root",
        password=secret.password if secret else None,
        ssh_key=secret.ssh_key if secret else None,
    )


def _apply_facts(session: Session, host: Host, result: ConnectResult) -> list[Drift]:
    """A host's capacity is what its agent reports (a simulated host's: what it was added with);
    what its VMs hold stays held. Its VMs' states follow what the host really runs, for every kind
    of host (mgmt.services.vm.reconcile)."""
    if result.facts is None:
        return []
    facts = result.facts.facts
    used_cpu = host.total_cpu - host.available_cpu
    used_memory = host.total_memory_size - host.available_memory_size
    host.total_cpu = facts.cpu_num
    host.total_memory_size = facts.memory_size
    host.available_cpu = max(0, facts.cpu_num - used_cpu)
    host.available_memory_size = max(0, facts.memory_size - used_memory)
    return reconcile_host(session, host.uuid, {vm.uuid: vm.state for vm in result.facts.vms})


def _not_connected(inv: HostInventory, result: ConnectResult) -> RingstackError:
    """The error reply of a request to connect a host that ended Disconnected."""
    details: dict[str, object] = {"uuid": inv.uuid, "status": inv.status}
    if result.error is not None:
        details.update(result.error.details)
        return RingstackError(
            result.error.code,
            f"host {inv.uuid} could not be connected: {result.error.message}",
            details=details,
        )
    return RingstackError(
        Sys.UNAVAILABLE, f"host {inv.uuid} could not be connected: {inv.status_reason}", details=details
    )


def _flush_unique_ip(session: Session, ip: str) -> None:
    """Flush, turning a race on the unique management IP into the same stable error."""
    try:
        session.flush()
    except IntegrityError as exc:
        if "management_ip" in str(exc.orig):
            raise _ip_in_use(ip) from None
        raise


class HostService(Service):
    name = "host"

    db: Database
    events: EventPublisher
    cascade: CascadeRegistry
    bus: AsyncBus
    agents: AgentClient
    garbage: GarbageCollector
    config: NodeConfig
    node_uuid: str

    async def start(self) -> None:
        self.cascade.register(HOST_RULE)

    async def stop(self) -> None:
        self.cascade.unregister(HOST_RULE.kind)

    # ------------------------------------------------------------------ add

    @handler(AddKVMHost)
    async def add_kvm_host(self, msg: AddKVMHost, ctx: CallContext) -> HostReply:
        secret = HostSecret(password=_secret(msg.password), ssh_key=_secret(msg.ssh_key))
        host = Host(ssh_port=msg.ssh_port, username=msg.username, total_cpu=0, total_memory_size=0)
        return await self._add(msg, ctx, "KVM", host, secret)

    @handler(AddSimulatorHost)
    async def add_simulator_host(self, msg: AddSimulatorHost, ctx: CallContext) -> HostReply:
        host = Host(total_cpu=msg.total_cpu, total_memory_size=msg.total_memory_size)
        return await self._add(msg, ctx, "Simulator", host, None)

    async def _add(
        self,
        msg: AddKVMHost | AddSimulatorHost,
        ctx: CallContext,
        hypervisor_type: str,
        host: Host,
        secret: HostSecret | None,
    ) -> HostReply:
        uuid = ctx.new_resource_uuid(msg)

        def create(session: Session) -> tuple[HostInventory, bool]:
            existing = create_guard(session, Host, uuid, ctx)
            if existing is not None:
                return _inventory(existing), False
            cluster = load_visible(session, Cluster, msg.cluster_uuid, ctx.account, "cluster")
            if cluster.hypervisor_type != hypervisor_type:
                raise RingstackError(
                    HostError.HYPERVISOR_MISMATCH,
                    f"cluster {cluster.uuid} is a {cluster.hypervisor_type} cluster;"
                    f" a {hypervisor_type} host cannot join it",
                    details={"clusterUuid": cluster.uuid, "hypervisorType": cluster.hypervisor_type},
                )
            _check_ip_free(session, msg.management_ip)
            host.uuid = uuid
            host.name = msg.name
            host.description = msg.description
            host.zone_uuid = cluster.zone_uuid
            host.cluster_uuid = cluster.uuid
            host.hypervisor_type = hypervisor_type
            host.management_ip = msg.management_ip
            host.state = "Enabled"
            host.status = "Connecting"
            host.available_cpu = host.total_cpu
            host.available_memory_size = host.total_memory_size
            host.owner_account_uuid = ctx.account.uuid
            session.add(host)
            _flush_unique_ip(session, msg.management_ip)
            if secret is not None:
                secret.host_uuid = uuid
                session.add(secret)
            session.flush()
            return _inventory(host), True

        inv, created = await self.db.run(create)
        if created:
            await self.events.resource_event("host", inv.uuid, "created", inv.to_wire())
        if inv.status == "Connecting":  # new, or a resumed add that stopped before connecting
            inv, result = await self._connect(inv)
            if hypervisor_type == "KVM" and inv.status != "Connected":
                # Kept Disconnected, with the reason: the operator fixes what failed and reconnects.
                raise _not_connected(inv, result)
        return HostReply(inventory=inv)

    async def _connect(self, inv: HostInventory) -> tuple[HostInventory, ConnectResult]:
        """Run the connection and record its outcome (status and reason, and a KVM host's facts)."""
        if inv.hypervisor_type == "Simulator":
            result = await connect_simulator(
                self.bus, self.agents, inv.uuid, inv.total_cpu, inv.total_memory_size
            )
        else:
            login = await self.db.run(_kvm_login, inv.uuid)
            result = await connect_kvm(self.bus, self.config, inv.uuid, login, self.node_uuid)
        return await self._record_status(inv.uuid, result), result

    async def _record_status(self, uuid: str, result: ConnectResult) -> HostInventory:
        def record(session: Session) -> tuple[HostInventory, bool, list[Drift]]:
            host = session.get(Host, uuid)
            if host is None:
                raise not_found("host", uuid)
            changed = (host.status, host.status_reason) != (result.status, result.reason)
            host.status = result.status
            host.status_reason = result.reason
            drifts = _apply_facts(session, host, result)
            session.flush()
            return _inventory(host), changed, drifts

        inv, changed, drifts = await self.db.run(record)
        if changed:
            await self.events.resource_event("host", uuid, "status", inv.to_wire())
        if inv.status == "Connected":
            await self.garbage.kick(uuid)  # what failed to be undone there: retry it now
        for drift in drifts:
            await self.events.resource_event(drift.kind, drift.uuid, drift.action, dict(drift.detail))
        return inv

    async def _forget_agent(self, host_uuid: str) -> None:
        """A deleted KVM host's broker user and agent queue go too; best-effort (the host is gone
        either way), each failure logged."""
        try:
            # Deleting the user also closes the agent's connections: it can no longer log in.
            await BrokerAdmin().delete_agent_user_async(self.bus.topology.namespace, host_uuid)
        except RingstackError as exc:
            log.warning("host %s deleted, but not its broker user: %s", host_uuid, exc.message)
        try:
            await delete_agent_queue(self.bus, host_uuid)
        except Exception as exc:
            queue = self.bus.topology.agent_queue(host_uuid).name
            log.warning("host %s deleted, but not its agent queue %s: %s", host_uuid, queue, exc)

    # ------------------------------------------------------------------ connection and state

    @handler(ReconnectHost)
    async def reconnect_host(self, msg: ReconnectHost, ctx: CallContext) -> HostReply:
        def load(session: Session) -> HostInventory:
            return _inventory(load_visible(session, Host, msg.uuid, ctx.account, "host"))

        inv = await self.db.run(load)
        await self._record_status(inv.uuid, ConnectResult("Connecting"))
        inv, result = await self._connect(inv)
        if inv.status != "Connected":
            # The request was to connect, and that failed: say so, with the reason recorded.
            raise _not_connected(inv, result)
        return HostReply(inventory=inv)

    @handler(ChangeHostState)
    async def change_host_state(self, msg: ChangeHostState, ctx: CallContext) -> HostReply:
        def current(session: Session) -> HostInventory:
            return _inventory(load_visible(session, Host, msg.uuid, ctx.account, "host"))

        inv = await self.db.run(current)
        if ctx.resumed and msg.state_event == "maintain" and inv.state == "Maintenance":
            return HostReply(inventory=inv)  # the maintain being re-run had already finished
        # Each step commits on its own: PreMaintenance is visible while VMs would be moved away
        # (VM migration arrives with the VM issues), and a failure leaves the host there.
        for event in api_steps(inv.state, msg.state_event):
            inv = await self._apply_state_event(msg.uuid, event, ctx)
        return HostReply(inventory=inv)

    async def _apply_state_event(self, uuid: str, event: str, ctx: CallContext) -> HostInventory:
        def apply(session: Session) -> tuple[HostInventory, bool]:
            host = load_visible(session, Host, uuid, ctx.account, "host")
            new_state = next_state(uuid, host.state, event)
            changed = new_state != host.state
            host.state = new_state
            session.flush()
            return _inventory(host), changed

        inv, changed = await self.db.run(apply)
        if changed:
            await self.events.resource_event("host", uuid, "state", inv.to_wire())
        return inv

    # ------------------------------------------------------------------ update, delete, query

    @handler(UpdateHost)
    async def update_host(self, msg: UpdateHost, ctx: CallContext) -> HostReply:
        def update(session: Session) -> HostInventory:
            host = load_visible(session, Host, msg.uuid, ctx.account, "host")
            if msg.name is not None:
                host.name = msg.name
            if msg.description is not None:
                host.description = msg.description
            if msg.management_ip is not None and msg.management_ip != host.management_ip:
                _check_ip_free(session, msg.management_ip, except_uuid=host.uuid)
                host.management_ip = msg.management_ip
            _flush_unique_ip(session, host.management_ip)
            return _inventory(host)

        inv = await self.db.run(update)
        await self.events.resource_event("host", inv.uuid, "updated", inv.to_wire())
        return HostReply(inventory=inv)

    @handler(UpdateKVMHost)
    async def update_kvm_host(self, msg: UpdateKVMHost, ctx: CallContext) -> HostReply:
        def update(session: Session) -> HostInventory:
            host = load_visible(session, Host, msg.uuid, ctx.account, "host")
            if host.hypervisor_type != "KVM":
                raise RingstackError(
                    HostError.NOT_KVM_HOST,
                    f"host {host.uuid} is a {host.hypervisor_type} host, not a KVM host",
                    details={"uuid": host.uuid, "hypervisorType": host.hypervisor_type},
                )
            if msg.username is not None:
                host.username = msg.username
            if msg.ssh_port is not None:
                host.ssh_port = msg.ssh_port
            if msg.password is not None or msg.ssh_key is not None:
                secret = session.get(HostSecret, host.uuid) or HostSecret(host_uuid=host.uuid)
                # One way to log in at a time: a new password replaces a key and vice versa.
                secret.password = _secret(msg.password)
                secret.ssh_key = _secret(msg.ssh_key)
                session.add(secret)
            session.flush()
            return _inventory(host)

        inv = await self.db.run(update)
        await self.events.resource_event("host", inv.uuid, "updated", inv.to_wire())
        return HostReply(inventory=inv)

    @handler(DeleteHost)
    async def delete_host(self, msg: DeleteHost, ctx: CallContext) -> EmptyReply:
        """Deleting a host that is already gone succeeds, so a retried delete is safe."""

        def remove(session: Session) -> tuple[dict[str, list[str]], str] | None:
            host = session.get(Host, msg.uuid)
            if host is None:
                return None
            cascaded = self.cascade.delete(session, "host", msg.uuid, msg.delete_mode)
            hypervisor_type = host.hypervisor_type
            session.delete(host)
            return cascaded, hypervisor_type

        removed = await self.db.run(remove)
        if removed is not None:
            cascaded, hypervisor_type = removed
            if hypervisor_type == "KVM":
                await self._forget_agent(msg.uuid)
            await announce_deleted(self.events, cascaded, "host", msg.uuid)
        elif ctx.resumed:
            # A delete re-run after a crash: the row went, its cleanup may not have (idempotent).
            await self._forget_agent(msg.uuid)
        return EmptyReply()

    @handler(QueryHost, serial=False)
    async def query_host(self, msg: QueryHost, ctx: CallContext) -> QueryReply:
        return await self.db.run(run_query, QUERY, msg, ctx.account)
