"""Port forwarding (ZStack's ``PortForwardingRule``), the database side: a VIP's port range to a VM
NIC's ports, applied by the VR of the NIC's L3. A VIP serves port forwarding or an EIP, never both
(``vip.useFor``); rules of one VIP and protocol never overlap. Each function runs in one
transaction and locks the VIP's row, so concurrent rules of one VIP are checked one at a time."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from bus.errors import RingstackError, Sys, not_found
from mgmt.core.access import load_owned
from mgmt.core.db import create_guard
from mgmt.core.service import Account, CallContext
from mgmt.services.network.providers import services_from
from mgmt.services.vrouter import errors
from mgmt.services.vrouter.appliance import PROVIDER_TYPE, pf_of, vr_of_l3
from schema.api.vrouter import CreatePortForwardingRule, PortForwardingRuleInventory
from schema.db.vm import VmInstance, VmNic
from schema.db.vrouter import PortForwardingRule, Vip
from schema.vrouter import PortForwarding

PF_KIND = "portForwardingRule"
PF_USE = "PortForwarding"


@dataclass
class VrChange:
    """What to tell a VR after the transaction: the rule to create or remove there, and whether
    its VIP is to be added (first rule of the VIP on that VR) or removed (last one gone)."""

    vr_uuid: str
    rule: PortForwarding
    vip_ip: str
    vip_first: bool = False
    vip_last: bool = False


def inventory(row: PortForwardingRule) -> PortForwardingRuleInventory:
    return PortForwardingRuleInventory.model_validate(row, from_attributes=True)


def _lock_vip(session: Session, vip_uuid: str, account: Account) -> Vip:
    vip = load_owned(session, Vip, vip_uuid, account, "vip")
    session.refresh(vip, with_for_update=True)
    return vip


def _attached_on_vip(session: Session, vip_uuid: str, besides: str) -> int:
    return (
        session.scalar(
            select(func.count())
            .select_from(PortForwardingRule)
            .where(
                PortForwardingRule.vip_uuid == vip_uuid,
                PortForwardingRule.vm_nic_uuid.is_not(None),
                PortForwardingRule.uuid != besides,
            )
        )
        or 0
    )


def create(
    session: Session, msg: CreatePortForwardingRule, uuid: str, ctx: CallContext
) -> PortForwardingRule:
    existing = create_guard(session, PortForwardingRule, uuid, ctx)
    if existing is not None:
        return existing
    vip = _lock_vip(session, msg.vip_uuid, ctx.account)
    if vip.use_for not in (None, PF_USE):
        raise RingstackError(
            errors.VIP_NOT_FREE,
            f"VIP {vip.ip} ({vip.uuid}) is used by {vip.use_for}",
            details={"useFor": vip.use_for},
        )
    assert msg.vip_port_end and msg.private_port_start and msg.private_port_end  # the model fills them
    for other in session.scalars(
        select(PortForwardingRule).where(
            PortForwardingRule.vip_uuid == vip.uuid, PortForwardingRule.protocol_type == msg.protocol_type
        )
    ):
        if other.vip_port_start <= msg.vip_port_end and msg.vip_port_start <= other.vip_port_end:
            raise RingstackError(
                errors.PF_CONFLICT,
                f"ports {msg.vip_port_start}-{msg.vip_port_end}/{msg.protocol_type} of VIP {vip.ip} overlap"
                f" rule {other.uuid} ({other.vip_port_start}-{other.vip_port_end})",
                details={"ruleUuid": other.uuid},
            )
    vip.use_for = PF_USE
    row = PortForwardingRule(
        uuid=uuid,
        name=msg.name,
        description=msg.description,
        vip_uuid=vip.uuid,
        vip_ip=vip.ip,
        protocol_type=msg.protocol_type,
        vip_port_start=msg.vip_port_start,
        vip_port_end=msg.vip_port_end,
        private_port_start=msg.private_port_start,
        private_port_end=msg.private_port_end,
        allowed_cidr=str(msg.allowed_cidr) if msg.allowed_cidr is not None else None,
        state="Enabled",
        owner_account_uuid=ctx.account.uuid,
    )
    session.add(row)
    session.flush()
    return row


def attach(
    session: Session, rule_uuid: str, nic_uuid: str, account: Account
) -> tuple[PortForwardingRuleInventory, VrChange | None]:
    """Bind the rule to the NIC (the NIC's L3 must take PortForwarding from a VR that exists, and
    the VIP must be on that VR's public network); the change the VR must make."""
    rule = load_owned(session, PortForwardingRule, rule_uuid, account, PF_KIND)
    vip = _lock_vip(session, rule.vip_uuid, account)
    if rule.vm_nic_uuid == nic_uuid:
        return inventory(rule), None  # already: a retried attach succeeds
    if rule.vm_nic_uuid is not None:
        raise RingstackError(
            errors.PF_CONFLICT,
            f"port forwarding rule {rule.uuid} is attached to NIC {rule.vm_nic_uuid}; detach it first",
            details={"vmNicUuid": rule.vm_nic_uuid},
        )
    nic = load_owned(session, VmNic, nic_uuid, account, "vm nic")
    vm = session.get(VmInstance, nic.vm_instance_uuid)
    if vm is None or vm.state in ("Destroyed", "Expunging", "Destroying"):
        raise RingstackError(Sys.INVALID_ARGUMENT, f"the VM of NIC {nic_uuid} is destroyed")
    services = services_from(session, PROVIDER_TYPE, [nic.l3_network_uuid]).get(
        nic.l3_network_uuid, frozenset()
    )
    vr = vr_of_l3(session, nic.l3_network_uuid)
    if "PortForwarding" not in services or vr is None or nic.ip is None:
        raise RingstackError(
            errors.NIC_NOT_SERVED,
            f"NIC {nic_uuid}'s L3 network {nic.l3_network_uuid} has no PortForwarding from a virtual router",
            details={"l3NetworkUuid": nic.l3_network_uuid},
        )
    if vip.l3_network_uuid != vr.public_network_uuid:
        raise RingstackError(
            Sys.INVALID_ARGUMENT,
            f"VIP {vip.ip} is on L3 network {vip.l3_network_uuid}; the VR of NIC {nic_uuid} is on public "
            f"network {vr.public_network_uuid}",
        )
    first = _attached_on_vip(session, vip.uuid, besides=rule.uuid) == 0
    rule.vm_nic_uuid, rule.guest_ip = nic.uuid, nic.ip
    session.flush()
    return inventory(rule), VrChange(vr.uuid, pf_of(rule), vip.ip, vip_first=first)


def detach(
    session: Session, rule_uuid: str, account: Account
) -> tuple[PortForwardingRuleInventory, VrChange | None]:
    rule = load_owned(session, PortForwardingRule, rule_uuid, account, PF_KIND)
    vip = _lock_vip(session, rule.vip_uuid, account)
    return inventory(rule), _unbind(session, rule, vip)


def _unbind(session: Session, rule: PortForwardingRule, vip: Vip) -> VrChange | None:
    if rule.vm_nic_uuid is None:
        return None
    nic = session.get(VmNic, rule.vm_nic_uuid)
    vr = vr_of_l3(session, nic.l3_network_uuid) if nic is not None else None
    change = None
    if vr is not None and rule.guest_ip:
        last = _attached_on_vip(session, vip.uuid, besides=rule.uuid) == 0
        change = VrChange(vr.uuid, pf_of(rule), vip.ip, vip_last=last)
    rule.vm_nic_uuid, rule.guest_ip = None, None
    session.flush()
    return change


def delete(session: Session, rule_uuid: str, account: Account) -> tuple[bool, VrChange | None]:
    rule = session.get(PortForwardingRule, rule_uuid)
    if rule is None:
        return False, None  # a retried delete succeeds
    rule = load_owned(session, PortForwardingRule, rule_uuid, account, PF_KIND)
    vip = _lock_vip(session, rule.vip_uuid, account)
    change = _unbind(session, rule, vip)
    session.delete(rule)
    session.flush()
    if not session.scalar(
        select(func.count()).select_from(PortForwardingRule).where(PortForwardingRule.vip_uuid == vip.uuid)
    ):
        vip.use_for = None
    return True, change


def rebind(session: Session, rule_uuid: str, nic_uuid: str | None, guest_ip: str | None) -> None:
    """Undo of an attach or detach whose push to the VR failed."""
    rule = session.get(PortForwardingRule, rule_uuid)
    if rule is None:
        raise not_found(PF_KIND, rule_uuid)
    rule.vm_nic_uuid, rule.guest_ip = nic_uuid, guest_ip


def detach_nics_of(session: Session, vm_uuid: str) -> list[str]:
    """A destroyed VM's NICs lose their port forwardings (ZStack's rule); the VRs to re-sync."""
    nics = {
        n.uuid: n.l3_network_uuid
        for n in session.scalars(select(VmNic).where(VmNic.vm_instance_uuid == vm_uuid))
    }
    for rule in session.scalars(
        select(PortForwardingRule).where(PortForwardingRule.vm_nic_uuid.in_(list(nics)))
    ):
        rule.vm_nic_uuid, rule.guest_ip = None, None
    vrs = [vr_of_l3(session, l3) for l3 in sorted(set(nics.values()))]
    return [vr.uuid for vr in vrs if vr is not None and vr.status != "Creating"]
