"""What the database says a host's security groups should be, and which hosts a change reaches.

Every push is a host's whole state (``ApplySecurityGroupRulesCommand``), computed here in one
transaction; the agent changes only what differs, so telling a host more often than needed costs a
read, not a rule.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from schema.agent import (
    ApplySecurityGroupRulesCommand,
    SecurityGroupRuleSpec,
    SecurityGroupSpec,
    VmNicSecuritySpec,
)
from schema.db.host import Host
from schema.db.securitygroup import (
    SecurityGroup,
    SecurityGroupFailedHost,
    SecurityGroupHostNic,
    SecurityGroupRule,
    VmNicSecurityGroupRef,
)
from schema.db.vm import VmInstance, VmNic


def host_state(session: Session, host_uuid: str) -> ApplySecurityGroupRulesCommand:
    rows = session.execute(
        select(VmNic.uuid, VmNic.mac, VmNic.ip, VmNicSecurityGroupRef.security_group_uuid)
        .join(VmInstance, VmInstance.uuid == VmNic.vm_instance_uuid)
        .join(VmNicSecurityGroupRef, VmNicSecurityGroupRef.vm_nic_uuid == VmNic.uuid)
        .join(SecurityGroup, SecurityGroup.uuid == VmNicSecurityGroupRef.security_group_uuid)
        .where(VmInstance.host_uuid == host_uuid, SecurityGroup.state == "Enabled")
        .order_by(VmNic.uuid, VmNicSecurityGroupRef.created_at, VmNicSecurityGroupRef.uuid)
    ).all()
    nics: dict[str, VmNicSecuritySpec] = {}
    for nic_uuid, mac, ip, group in rows:
        spec = nics.get(nic_uuid)
        if spec is None:
            nics[nic_uuid] = VmNicSecuritySpec(
                nic_uuid=nic_uuid, mac=mac, ips=[ip] if ip else [], security_group_uuids=[group]
            )
        else:
            spec.security_group_uuids.append(group)
    used = {g for spec in nics.values() for g in spec.security_group_uuids}
    rules: dict[str, list[SecurityGroupRuleSpec]] = defaultdict(list)
    for rule in session.scalars(
        select(SecurityGroupRule)
        .where(SecurityGroupRule.security_group_uuid.in_(used))
        .order_by(SecurityGroupRule.created_at, SecurityGroupRule.uuid)
    ):
        rules[rule.security_group_uuid].append(
            SecurityGroupRuleSpec(
                type=rule.type,
                protocol=rule.protocol,
                start_port=rule.start_port,
                end_port=rule.end_port,
                allowed_cidr=rule.allowed_cidr,
                remote_security_group_uuid=rule.remote_security_group_uuid,
            )
        )
    remotes = {r.remote_security_group_uuid for rs in rules.values() for r in rs} - {None}
    return ApplySecurityGroupRulesCommand(
        host_uuid=host_uuid,
        nics=list(nics.values()),
        groups=[SecurityGroupSpec(uuid=g, rules=rules.get(g, [])) for g in sorted(used)],
        members=members(session, remotes),  # type: ignore[arg-type]
    )


def members(session: Session, groups: Iterable[str]) -> dict[str, list[str]]:
    """Member IPs of each group: its NICs' addresses, wherever their VMs are."""
    found: dict[str, list[str]] = {g: [] for g in groups}
    if not found:
        return found
    for group, ip in session.execute(
        select(VmNicSecurityGroupRef.security_group_uuid, VmNic.ip)
        .join(VmNic, VmNic.uuid == VmNicSecurityGroupRef.vm_nic_uuid)
        .where(VmNicSecurityGroupRef.security_group_uuid.in_(list(found)), VmNic.ip.is_not(None))
        .order_by(VmNic.ip)
    ):
        if ip is not None:
            found[group].append(ip)
    return found


def record_applied(session: Session, cmd: ApplySecurityGroupRulesCommand, vm_of: dict[str, str]) -> None:
    """The host now has exactly ``cmd``: remember its NICs, forget an earlier failure."""
    session.execute(delete(SecurityGroupHostNic).where(SecurityGroupHostNic.host_uuid == cmd.host_uuid))
    for nic in cmd.nics:
        for group in nic.security_group_uuids:
            session.add(
                SecurityGroupHostNic(
                    host_uuid=cmd.host_uuid,
                    vm_nic_uuid=nic.nic_uuid,
                    security_group_uuid=group,
                    vm_instance_uuid=vm_of.get(nic.nic_uuid, ""),
                )
            )
    session.execute(delete(SecurityGroupFailedHost).where(SecurityGroupFailedHost.host_uuid == cmd.host_uuid))


def vm_of_nics(session: Session, nic_uuids: Iterable[str]) -> dict[str, str]:
    nic_uuids = list(nic_uuids)
    if not nic_uuids:
        return {}
    return dict(
        session.execute(select(VmNic.uuid, VmNic.vm_instance_uuid).where(VmNic.uuid.in_(nic_uuids))).all()
    )


def record_failure(session: Session, host_uuid: str, error: str) -> None:
    if session.get(Host, host_uuid) is None:
        return  # the host was deleted meanwhile
    row = session.get(SecurityGroupFailedHost, host_uuid)
    if row is None:
        session.add(SecurityGroupFailedHost(host_uuid=host_uuid, error=error))
    else:
        row.error = error


def affected_hosts(
    session: Session,
    *,
    groups: Iterable[str] = (),
    nics: Iterable[str] = (),
    vms: Iterable[str] = (),
) -> list[str]:
    """Connected hosts whose rules may change when these groups, NICs or VMs change: hosts with
    NICs in the groups involved (and in groups naming them as remote, whose member sets change),
    and hosts where the NICs or VMs were last applied (they may have left)."""
    nics, vms = list(nics), list(vms)
    involved = set(groups)
    if nics or vms:
        involved |= set(
            session.scalars(
                select(VmNicSecurityGroupRef.security_group_uuid).where(
                    VmNicSecurityGroupRef.vm_nic_uuid.in_(nics)
                    | VmNicSecurityGroupRef.vm_instance_uuid.in_(vms)
                )
            )
        )
        involved |= set(
            session.scalars(
                select(SecurityGroupHostNic.security_group_uuid).where(
                    SecurityGroupHostNic.vm_nic_uuid.in_(nics)
                    | SecurityGroupHostNic.vm_instance_uuid.in_(vms)
                )
            )
        )
    if not involved:
        return []
    involved |= set(
        session.scalars(
            select(SecurityGroupRule.security_group_uuid).where(
                SecurityGroupRule.remote_security_group_uuid.in_(involved)
            )
        )
    )
    hosts: set[str | None] = set(
        session.scalars(
            select(VmInstance.host_uuid)
            .join(VmNicSecurityGroupRef, VmNicSecurityGroupRef.vm_instance_uuid == VmInstance.uuid)
            .where(VmNicSecurityGroupRef.security_group_uuid.in_(involved), VmInstance.host_uuid.is_not(None))
        )
    )
    hosts |= set(
        session.scalars(
            select(SecurityGroupHostNic.host_uuid).where(
                SecurityGroupHostNic.security_group_uuid.in_(involved)
                | SecurityGroupHostNic.vm_nic_uuid.in_(nics)
                | SecurityGroupHostNic.vm_instance_uuid.in_(vms)
            )
        )
    )
    if vms:
        hosts |= set(
            session.scalars(
                select(VmInstance.host_uuid).where(
                    VmInstance.uuid.in_(vms), VmInstance.host_uuid.is_not(None)
                )
            )
        )
    return connected(session, {h for h in hosts if h is not None})


def connected(session: Session, hosts: Iterable[str]) -> list[str]:
    """The connected ones (the others get their whole state when they reconnect)."""
    hosts = list(hosts)
    if not hosts:
        return []
    return sorted(session.scalars(select(Host.uuid).where(Host.uuid.in_(hosts), Host.status == "Connected")))


def failed_hosts(session: Session) -> list[str]:
    return connected(session, session.scalars(select(SecurityGroupFailedHost.host_uuid)))
