"""Security groups (ZStack's ``SecurityGroupManagerImpl``), as an observer plugin.

- The APIs change the database first, then tell every affected host (``state.affected_hosts``). A
  host that cannot be told makes the API call fail with ``SECURITYGROUP.APPLY_FAILED`` naming it;
  the change stays in the database (it is what the user asked for), the host is remembered as
  failed and gets its whole state at its next sync: a retry every ``RETRY_INTERVAL``, a
  reconnect, or any later change that reaches it.
- It watches events, never the VM service's code: a VM created, started, stopped, migrated,
  destroyed, deleted or changed (NICs) re-syncs the hosts it was and is on, and the hosts whose
  member sets it is in; a host becoming Connected gets a full sync.
- One host's sync runs on the host's owner node, in the host's serial queue
  (``SyncSecurityGroupsOnHost``), so two syncs of one host never interleave.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from bus.aio import AsyncBus, Consumer
from bus.envelope import Envelope, new_uuid
from bus.errors import RingstackError, Sys, not_found
from bus.topology import QueueSpec
from mgmt.cluster.owner import OwnerPath
from mgmt.core.access import forget_sharing, load_for_delete, load_owned, load_visible, visible
from mgmt.core.agents import AgentClient
from mgmt.core.db import Database, create_guard
from mgmt.core.events import EventPublisher
from mgmt.core.query import QueryTarget, Relation, run_query
from mgmt.core.service import CallContext, Service, handler
from mgmt.services.securitygroup import state
from mgmt.services.securitygroup.errors import SecurityGroupError
from schema.agent import SecurityGroupReply as AgentReply
from schema.api.base import EmptyReply, Event, QueryReply
from schema.api.securitygroup import (
    AddSecurityGroupRule,
    AddVmNicToSecurityGroup,
    AttachSecurityGroupToL3Network,
    CreateSecurityGroup,
    DeleteSecurityGroup,
    DeleteSecurityGroupRule,
    DeleteVmNicFromSecurityGroup,
    DetachSecurityGroupFromL3Network,
    QuerySecurityGroup,
    QuerySecurityGroupRule,
    QueryVmNicInSecurityGroup,
    SecurityGroupInventory,
    SecurityGroupReply,
    SecurityGroupRuleInventory,
    SyncSecurityGroupsOnHost,
    VmNicSecurityGroupRefInventory,
)
from schema.db.network import L3Network
from schema.db.securitygroup import (
    SecurityGroup,
    SecurityGroupL3NetworkRef,
    SecurityGroupRule,
    VmNicSecurityGroupRef,
)
from schema.db.vm import VmNic

log = logging.getLogger(__name__)

RETRY_INTERVAL = 30.0  # seconds between retries of hosts whose last push failed
PUSH_TIMEOUT = 60.0
# VM actions (see the VM service's events) after which a VM's hosts may need new rules.
VM_ACTIONS = ("created", "state", "migrated", "destroyed", "recovered", "deleted", "updated")

GROUP_QUERY = QueryTarget.for_model(
    SecurityGroup,
    SecurityGroupInventory,
    name="securityGroup",
    relations={
        "rules": Relation("securityGroupRule", SecurityGroup.uuid, SecurityGroupRule.security_group_uuid),
        "l3Network": Relation(
            "l3Network",
            SecurityGroup.uuid,
            L3Network.uuid,
            through=(
                SecurityGroupL3NetworkRef.security_group_uuid,
                SecurityGroupL3NetworkRef.l3_network_uuid,
            ),
        ),
    },
)
RULE_QUERY = QueryTarget.for_model(
    SecurityGroupRule,
    SecurityGroupRuleInventory,
    name="securityGroupRule",
    relations={
        "securityGroup": Relation("securityGroup", SecurityGroupRule.security_group_uuid, SecurityGroup.uuid)
    },
)
NIC_REF_QUERY = QueryTarget.for_model(VmNicSecurityGroupRef, VmNicSecurityGroupRefInventory)


def _inventory(session: Session, uuid: str) -> SecurityGroupInventory:
    group = session.get(SecurityGroup, uuid, populate_existing=True)
    if group is None:
        raise not_found("security group", uuid)
    return SecurityGroupInventory.model_validate(group)


class SecurityGroupService(Service):
    name = "securitygroup"

    db: Database
    events: EventPublisher
    agents: AgentClient
    bus: AsyncBus
    owners: OwnerPath

    async def start(self) -> None:
        self._consumer: Consumer | None = None
        self._retry: asyncio.Task[None] | None = None
        # One queue shared by every node's service: each event is handled once, by whichever node
        # takes it. It expires when no node has consumed it for a while (the plugin was removed).
        spec = self.bus.topology.event_queue("securitygroup", "vm.*.*", "host.*.status", durable=True)
        spec = QueueSpec(
            spec.name,
            durable=True,
            bindings=spec.bindings,
            arguments={"x-expires": 15 * 60 * 1000, "x-message-ttl": 10 * 60 * 1000},
        )
        self._consumer = self.bus.consume(spec, self._on_event, prefetch=16)
        await self.bus.start_consumer(self._consumer)
        self._retry = asyncio.create_task(self._retry_loop())

    async def stop(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retry
        if self._consumer is not None:
            await self.bus.cancel(self._consumer)

    # ------------------------------------------------------------------ pushing

    async def _push(self, hosts: list[str]) -> dict[str, RingstackError]:
        """Sync each host through its owner; the errors of those that failed."""

        async def one(host: str) -> RingstackError | None:
            try:
                await self.owners.call(
                    "SyncSecurityGroupsOnHost", {"hostUuid": host}, resource_uuid=host, timeout=PUSH_TIMEOUT
                )
            except RingstackError as exc:
                return exc
            return None

        results = await asyncio.gather(*(one(h) for h in hosts))
        return {h: e for h, e in zip(hosts, results, strict=True) if e is not None}

    async def _push_or_fail(self, hosts: list[str], what: str) -> None:
        failed = await self._push(hosts)
        if failed:
            raise RingstackError(
                SecurityGroupError.APPLY_FAILED,
                f"{what} is saved, but {len(failed)} of {len(hosts)} hosts could not apply it yet"
                " (they get it at their next sync)",
                details={"hosts": {h: e.to_wire() for h, e in failed.items()}},
            )

    @handler(SyncSecurityGroupsOnHost)
    async def sync_host(self, msg: SyncSecurityGroupsOnHost, ctx: CallContext) -> EmptyReply:
        cmd = await self.db.run(state.host_state, msg.host_uuid)
        try:
            reply = await self.agents.call(cmd, AgentReply, timeout=PUSH_TIMEOUT)
        except RingstackError as exc:
            log.warning("security groups of host %s not applied: %s", msg.host_uuid, exc)
            await self.db.run(state.record_failure, msg.host_uuid, f"{exc.code}: {exc.message}")
            raise

        def applied(session: Session) -> None:
            state.record_applied(session, cmd, state.vm_of_nics(session, [n.nic_uuid for n in cmd.nics]))

        await self.db.run(applied)
        if reply.changed:
            log.info(
                "host %s: security groups applied (%d rules, %d set members changed)",
                msg.host_uuid,
                reply.rules_changed,
                reply.set_members_changed,
            )
        return EmptyReply()

    async def _retry_loop(self) -> None:
        while True:
            await asyncio.sleep(RETRY_INTERVAL)
            try:
                hosts = await self.db.run(state.failed_hosts)
                mine = [h for h in hosts if self.owners.owns(h)]
                if mine:
                    await self._push(mine)
            except Exception:  # the loop must outlive a bad round (database down, ...)
                log.exception("retrying security group pushes failed")

    # ------------------------------------------------------------------ events

    async def _on_event(self, env: Envelope) -> None:
        try:
            event = Event.from_wire(env.body)
        except ValueError:
            log.warning("ignoring an unreadable %s event", env.name)
            return
        if event.resource_type == "host":
            if (event.inventory or {}).get("status") == "Connected":
                await self._push(await self.db.run(state.connected, [event.resource_uuid]))
            return
        if event.resource_type != "vm" or event.action not in VM_ACTIONS:
            return
        vm_uuid = event.resource_uuid

        # (After a delete the NICs are gone with their references; the applied rows remember them.)
        targets = await self.db.run(lambda s: state.affected_hosts(s, vms=[vm_uuid]))
        failed = await self._push(targets)
        for host, exc in failed.items():
            log.warning("after VM %s %s, host %s keeps stale rules: %s", vm_uuid, event.action, host, exc)

    # ------------------------------------------------------------------ groups

    @handler(CreateSecurityGroup)
    async def create_group(self, msg: CreateSecurityGroup, ctx: CallContext) -> SecurityGroupReply:
        uuid = ctx.new_resource_uuid(msg)

        def create(session: Session) -> SecurityGroupInventory:
            existing = create_guard(session, SecurityGroup, uuid, ctx)
            if existing is None:
                session.add(
                    SecurityGroup(
                        uuid=uuid,
                        name=msg.name,
                        description=msg.description,
                        state="Enabled",
                        owner_account_uuid=ctx.account.uuid,
                    )
                )
                session.flush()
            return _inventory(session, uuid)

        inv = await self.db.run(create)
        await self.events.resource_event("security_group", uuid, "created", inv.to_wire())
        return SecurityGroupReply(inventory=inv)

    @handler(DeleteSecurityGroup)
    async def delete_group(self, msg: DeleteSecurityGroup, ctx: CallContext) -> EmptyReply:
        def delete_(session: Session) -> list[str] | None:
            group = load_for_delete(session, SecurityGroup, msg.uuid, ctx.account, "security group")
            if group is None:
                return None
            in_use = session.scalars(
                select(VmNicSecurityGroupRef.vm_nic_uuid).where(
                    VmNicSecurityGroupRef.security_group_uuid == msg.uuid
                )
            ).all()
            if in_use and msg.delete_mode == "Permissive":
                raise RingstackError(
                    Sys.RESOURCE_IN_USE,
                    f"security group {msg.uuid} still has {len(in_use)} NICs (deleteMode=Enforcing removes them)",
                    details={"vmNicUuids": list(in_use)},
                )
            hosts = state.affected_hosts(session, groups=[msg.uuid])
            forget_sharing(session, [msg.uuid])
            session.delete(group)  # rules, references and rules naming it as remote cascade
            return hosts

        hosts = await self.db.run(delete_)
        if hosts is None:
            return EmptyReply()
        await self.events.resource_event("security_group", msg.uuid, "deleted")
        await self._push_or_fail(hosts, f"deleting security group {msg.uuid}")
        return EmptyReply()

    @handler(QuerySecurityGroup, serial=False)
    async def query_groups(self, msg: QuerySecurityGroup, ctx: CallContext) -> QueryReply:
        return await self.db.run(run_query, GROUP_QUERY, msg, ctx.account)

    # ------------------------------------------------------------------ rules

    @handler(AddSecurityGroupRule)
    async def add_rules(self, msg: AddSecurityGroupRule, ctx: CallContext) -> SecurityGroupReply:
        def add(session: Session) -> tuple[SecurityGroupInventory, list[str]]:
            group = load_owned(session, SecurityGroup, msg.security_group_uuid, ctx.account, "security group")
            existing = {
                _rule_key(
                    r.type, r.protocol, r.start_port, r.end_port, r.allowed_cidr, r.remote_security_group_uuid
                )
                for r in group.rules
            }
            for ao in msg.rules:
                if ao.remote_security_group_uuid is not None:
                    load_visible(
                        session, SecurityGroup, ao.remote_security_group_uuid, ctx.account, "security group"
                    )
                key = _rule_key(
                    ao.type,
                    ao.protocol,
                    ao.start_port,
                    ao.end_port,
                    ao.allowed_cidr,
                    ao.remote_security_group_uuid,
                )
                if key in existing:  # a repeated request (or a duplicate) adds nothing
                    continue
                existing.add(key)
                session.add(
                    SecurityGroupRule(
                        uuid=new_uuid(),
                        security_group_uuid=group.uuid,
                        type=ao.type,
                        protocol=ao.protocol,
                        start_port=ao.start_port,
                        end_port=ao.end_port,
                        allowed_cidr=ao.allowed_cidr,
                        remote_security_group_uuid=ao.remote_security_group_uuid,
                        owner_account_uuid=group.owner_account_uuid,
                    )
                )
            session.flush()
            return _inventory(session, group.uuid), state.affected_hosts(session, groups=[group.uuid])

        inv, hosts = await self.db.run(add)
        await self.events.resource_event("security_group", inv.uuid, "updated", inv.to_wire())
        await self._push_or_fail(hosts, f"the rules of security group {inv.uuid}")
        return SecurityGroupReply(inventory=inv)

    @handler(DeleteSecurityGroupRule)
    async def delete_rules(self, msg: DeleteSecurityGroupRule, ctx: CallContext) -> SecurityGroupReply:
        def remove(session: Session) -> tuple[SecurityGroupInventory, list[str]]:
            # Rules the caller cannot see are as absent ones: never read, never named in an error.
            stmt = select(SecurityGroupRule).where(SecurityGroupRule.uuid.in_(msg.rule_uuids))
            rules = session.scalars(visible(stmt, SecurityGroupRule, ctx.account)).all()
            groups = {r.security_group_uuid for r in rules}
            if not rules:
                raise not_found("security group rule", msg.rule_uuids[0])
            if len(groups) > 1:
                raise RingstackError(
                    SecurityGroupError.RULES_OF_SEVERAL_GROUPS,
                    "the rules belong to several security groups; delete them group by group",
                    details={"securityGroupUuids": sorted(groups)},
                )
            (group_uuid,) = groups
            load_owned(session, SecurityGroup, group_uuid, ctx.account, "security group")
            session.execute(
                delete(SecurityGroupRule).where(SecurityGroupRule.uuid.in_([r.uuid for r in rules]))
            )
            return _inventory(session, group_uuid), state.affected_hosts(session, groups=[group_uuid])

        inv, hosts = await self.db.run(remove)
        await self.events.resource_event("security_group", inv.uuid, "updated", inv.to_wire())
        await self._push_or_fail(hosts, f"the rules of security group {inv.uuid}")
        return SecurityGroupReply(inventory=inv)

    @handler(QuerySecurityGroupRule, serial=False)
    async def query_rules(self, msg: QuerySecurityGroupRule, ctx: CallContext) -> QueryReply:
        return await self.db.run(run_query, RULE_QUERY, msg, ctx.account)

    # ------------------------------------------------------------------ L3 networks

    @handler(AttachSecurityGroupToL3Network)
    async def attach_l3(self, msg: AttachSecurityGroupToL3Network, ctx: CallContext) -> SecurityGroupReply:
        def attach(session: Session) -> SecurityGroupInventory:
            group = load_owned(session, SecurityGroup, msg.security_group_uuid, ctx.account, "security group")
            load_visible(session, L3Network, msg.l3_network_uuid, ctx.account, "L3 network")
            exists = session.scalar(
                select(SecurityGroupL3NetworkRef.uuid).where(
                    SecurityGroupL3NetworkRef.security_group_uuid == group.uuid,
                    SecurityGroupL3NetworkRef.l3_network_uuid == msg.l3_network_uuid,
                )
            )
            if exists is None:
                session.add(
                    SecurityGroupL3NetworkRef(
                        uuid=new_uuid(),
                        security_group_uuid=group.uuid,
                        l3_network_uuid=msg.l3_network_uuid,
                        owner_account_uuid=group.owner_account_uuid,
                    )
                )
                session.flush()
            return _inventory(session, group.uuid)

        inv = await self.db.run(attach)
        await self.events.resource_event("security_group", inv.uuid, "updated", inv.to_wire())
        return SecurityGroupReply(inventory=inv)

    @handler(DetachSecurityGroupFromL3Network)
    async def detach_l3(self, msg: DetachSecurityGroupFromL3Network, ctx: CallContext) -> SecurityGroupReply:
        def detach(session: Session) -> tuple[SecurityGroupInventory, list[str]]:
            group = load_owned(session, SecurityGroup, msg.security_group_uuid, ctx.account, "security group")
            nics = session.scalars(
                select(VmNicSecurityGroupRef.vm_nic_uuid)
                .join(VmNic, VmNic.uuid == VmNicSecurityGroupRef.vm_nic_uuid)
                .where(
                    VmNicSecurityGroupRef.security_group_uuid == group.uuid,
                    VmNic.l3_network_uuid == msg.l3_network_uuid,
                )
            ).all()
            hosts = state.affected_hosts(session, groups=[group.uuid])
            session.execute(
                delete(VmNicSecurityGroupRef).where(
                    VmNicSecurityGroupRef.security_group_uuid == group.uuid,
                    VmNicSecurityGroupRef.vm_nic_uuid.in_(nics),
                )
            )
            session.execute(
                delete(SecurityGroupL3NetworkRef).where(
                    SecurityGroupL3NetworkRef.security_group_uuid == group.uuid,
                    SecurityGroupL3NetworkRef.l3_network_uuid == msg.l3_network_uuid,
                )
            )
            return _inventory(session, group.uuid), hosts if nics else []

        inv, hosts = await self.db.run(detach)
        await self.events.resource_event("security_group", inv.uuid, "updated", inv.to_wire())
        await self._push_or_fail(hosts, f"detaching security group {inv.uuid} from its L3 network")
        return SecurityGroupReply(inventory=inv)

    # ------------------------------------------------------------------ NICs

    @handler(AddVmNicToSecurityGroup)
    async def add_nics(self, msg: AddVmNicToSecurityGroup, ctx: CallContext) -> EmptyReply:
        def add(session: Session) -> list[str]:
            group = load_owned(session, SecurityGroup, msg.security_group_uuid, ctx.account, "security group")
            attached = set(group.attached_l3_network_uuids)
            have = set(
                session.scalars(
                    select(VmNicSecurityGroupRef.vm_nic_uuid).where(
                        VmNicSecurityGroupRef.security_group_uuid == group.uuid
                    )
                )
            )
            for nic_uuid in dict.fromkeys(msg.vm_nic_uuids):
                nic = load_owned(session, VmNic, nic_uuid, ctx.account, "VM NIC")
                if nic.l3_network_uuid not in attached:
                    raise RingstackError(
                        SecurityGroupError.L3_NOT_ATTACHED,
                        f"NIC {nic_uuid} is on L3 network {nic.l3_network_uuid}, which security group"
                        f" {group.uuid} is not attached to",
                        details={"vmNicUuid": nic_uuid, "l3NetworkUuid": nic.l3_network_uuid},
                    )
                if nic_uuid in have:
                    continue
                session.add(
                    VmNicSecurityGroupRef(
                        uuid=new_uuid(),
                        vm_nic_uuid=nic_uuid,
                        vm_instance_uuid=nic.vm_instance_uuid,
                        security_group_uuid=group.uuid,
                        owner_account_uuid=group.owner_account_uuid,
                    )
                )
            session.flush()
            return state.affected_hosts(session, groups=[group.uuid])

        hosts = await self.db.run(add)
        await self._push_or_fail(hosts, f"the NICs of security group {msg.security_group_uuid}")
        return EmptyReply()

    @handler(DeleteVmNicFromSecurityGroup)
    async def remove_nics(self, msg: DeleteVmNicFromSecurityGroup, ctx: CallContext) -> EmptyReply:
        def remove(session: Session) -> list[str]:
            group = load_owned(session, SecurityGroup, msg.security_group_uuid, ctx.account, "security group")
            hosts = state.affected_hosts(session, groups=[group.uuid])
            session.execute(
                delete(VmNicSecurityGroupRef).where(
                    VmNicSecurityGroupRef.security_group_uuid == group.uuid,
                    VmNicSecurityGroupRef.vm_nic_uuid.in_(msg.vm_nic_uuids),
                )
            )
            return hosts

        hosts = await self.db.run(remove)
        await self._push_or_fail(hosts, f"the NICs of security group {msg.security_group_uuid}")
        return EmptyReply()

    @handler(QueryVmNicInSecurityGroup, serial=False)
    async def query_nics(self, msg: QueryVmNicInSecurityGroup, ctx: CallContext) -> QueryReply:
        return await self.db.run(run_query, NIC_REF_QUERY, msg, ctx.account)


def _rule_key(*fields: object) -> tuple[object, ...]:
    return fields
