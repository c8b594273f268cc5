"""Domain operations, each a blocking function of a libvirt connection (run in the pool by
``Hypervisor.call``), each idempotent: it reads the domain's state and acts only when needed.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

import libvirt

from agents.kvm import domxml
from bus.errors import RingstackError
from schema.agent import AgentErrors, VmStatus

# libvirt's "the driver cannot do that" codes: fall back to a plainer call, or say so clearly.
UNSUPPORTED = frozenset(
    {libvirt.VIR_ERR_NO_SUPPORT, libvirt.VIR_ERR_INVALID_ARG, libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED}
)


def lookup(conn: libvirt.virConnect, vm_uuid: str) -> libvirt.virDomain | None:
    try:
        return conn.lookupByUUIDString(vm_uuid)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return None
        raise


def require(conn: libvirt.virConnect, vm_uuid: str, host_uuid: str) -> libvirt.virDomain:
    dom = lookup(conn, vm_uuid)
    if dom is None:
        raise RingstackError(AgentErrors.VM_NOT_FOUND, f"VM {vm_uuid} is not on host {host_uuid}")
    return dom


def state_of(dom: libvirt.virDomain) -> str:
    """The protocol's state (Running, Stopped, Paused, Crashed) of a domain."""
    state, reason = dom.state()
    if state in (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PMSUSPENDED):
        return "Paused"
    if state == libvirt.VIR_DOMAIN_CRASHED:
        return "Crashed"
    if state == libvirt.VIR_DOMAIN_SHUTOFF:
        return "Crashed" if reason == libvirt.VIR_DOMAIN_SHUTOFF_CRASHED else "Stopped"
    return "Running"  # running, blocked, shutting down, no state


def state(conn: libvirt.virConnect, vm_uuid: str) -> str:
    dom = lookup(conn, vm_uuid)
    return "Absent" if dom is None else state_of(dom)


def event_state(event: int, detail: int) -> tuple[str | None, str]:
    """What a lifecycle event means in the protocol: (state or None to ignore, reason)."""
    if event == libvirt.VIR_DOMAIN_EVENT_STOPPED:
        if detail == libvirt.VIR_DOMAIN_EVENT_STOPPED_CRASHED:
            return "Crashed", "crashed"
        if detail == libvirt.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN:
            return "Stopped", "shut down from inside the guest"
        if detail == libvirt.VIR_DOMAIN_EVENT_STOPPED_MIGRATED:
            return "Absent", "migrated away"
        if detail == libvirt.VIR_DOMAIN_EVENT_STOPPED_DESTROYED:
            return "Stopped", "powered off outside ringstack"
        return "Stopped", "stopped"
    if event == libvirt.VIR_DOMAIN_EVENT_CRASHED:
        return "Crashed", "crashed"
    if event in (libvirt.VIR_DOMAIN_EVENT_STARTED, libvirt.VIR_DOMAIN_EVENT_RESUMED):
        return "Running", "started" if event == libvirt.VIR_DOMAIN_EVENT_STARTED else "resumed"
    if event in (libvirt.VIR_DOMAIN_EVENT_SUSPENDED, libvirt.VIR_DOMAIN_EVENT_PMSUSPENDED):
        return "Paused", "paused"
    if event == libvirt.VIR_DOMAIN_EVENT_UNDEFINED:
        return "Absent", "undefined outside ringstack"
    return None, ""  # defined, shutdown-in-progress: a state event follows


def list_vms(conn: libvirt.virConnect) -> list[VmStatus]:
    return [
        VmStatus(uuid=dom.name(), state=state_of(dom))
        for dom in conn.listAllDomains()
        if domxml.VM_NAME.match(dom.name())
    ]


def start(conn: libvirt.virConnect, vm_uuid: str, xml: str) -> str:
    """Define (or redefine, with the latest spec) and start; a running VM is left alone."""
    dom = lookup(conn, vm_uuid)
    if dom is not None and dom.isActive():
        if state_of(dom) == "Paused":
            dom.resume()
        return "Running"
    dom = conn.defineXML(xml)
    dom.create()
    return "Running"


def create(conn: libvirt.virConnect, vm_uuid: str, host_uuid: str) -> str:
    """Start an existing definition (a reboot's second half)."""
    dom = require(conn, vm_uuid, host_uuid)
    if not dom.isActive():
        dom.create()
    return "Running"


def request_shutdown(conn: libvirt.virConnect, vm_uuid: str) -> bool:
    """Press the ACPI power button; False when there is nothing running to shut down."""
    dom = lookup(conn, vm_uuid)
    if dom is None or not dom.isActive():
        return False
    try:
        dom.shutdownFlags(libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() not in UNSUPPORTED:
            raise
        dom.shutdown()  # a driver without the ACPI flag (the test driver): its own default
    return True


def destroy(conn: libvirt.virConnect, vm_uuid: str) -> None:
    """Power off at once; a VM that is not running stays as it is."""
    dom = lookup(conn, vm_uuid)
    if dom is None or not dom.isActive():
        return
    try:
        dom.destroy()
    except libvirt.libvirtError as exc:
        if exc.get_error_code() != libvirt.VIR_ERR_OPERATION_INVALID:  # it stopped meanwhile
            raise


def undefine(conn: libvirt.virConnect, vm_uuid: str) -> None:
    dom = lookup(conn, vm_uuid)
    if dom is None:
        return
    if dom.isActive():
        destroy(conn, vm_uuid)
    try:
        dom.undefineFlags(
            libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
        )
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return
        if exc.get_error_code() not in UNSUPPORTED:
            raise
        dom.undefine()


# ---------------------------------------------------------------------- devices


def attach(conn: libvirt.virConnect, dom: libvirt.virDomain, device: ET.Element, present: str | None) -> None:
    """Add a device to the running domain (hot-plug) and to its persistent definition, each only
    where it is missing. ``present`` is the XML of the live domain, to check."""
    xml = domxml.element_xml(device)
    if dom.isActive() and not _has(present or dom.XMLDesc(0), device):
        try:
            dom.attachDeviceFlags(xml, libvirt.VIR_DOMAIN_AFFECT_LIVE)
        except libvirt.libvirtError as exc:
            raise _no_hotplug(exc, "attach") from None
    inactive = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    if not _has(inactive, device):
        conn.defineXML(domxml.with_device(inactive, device))


def detach(conn: libvirt.virConnect, dom: libvirt.virDomain, device: ET.Element) -> None:
    """Remove a device from the running domain and from the persistent definition, where present."""
    if dom.isActive():
        live = (
            domxml.find_disk(dom.XMLDesc(0), _key(device))
            if device.tag == "disk"
            else domxml.find_nic(dom.XMLDesc(0), _key(device))
        )
        if live is not None:
            try:
                dom.detachDeviceFlags(domxml.element_xml(live), libvirt.VIR_DOMAIN_AFFECT_LIVE)
            except libvirt.libvirtError as exc:
                raise _no_hotplug(exc, "detach") from None
    inactive = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    if _has(inactive, device):
        conn.defineXML(domxml.without_device(inactive, device.tag, device))


def _key(device: ET.Element) -> str:
    if device.tag == "disk":
        source = device.find("source")
        return "" if source is None else source.get("file", "")
    mac = device.find("mac")
    return "" if mac is None else mac.get("address", "")


def _has(xml: str, device: ET.Element) -> bool:
    if device.tag == "disk":
        return domxml.find_disk(xml, _key(device)) is not None
    return domxml.find_nic(xml, _key(device)) is not None


def _no_hotplug(exc: libvirt.libvirtError, verb: str) -> libvirt.libvirtError | RingstackError:
    if exc.get_error_code() in UNSUPPORTED:
        return RingstackError(
            AgentErrors.HYPERVISOR_ERROR,
            f"cannot {verb} a device to a running VM here: the hypervisor driver does not hot-plug"
            f" ({exc.get_error_message()}); stop the VM first",
            details={"libvirtCode": exc.get_error_code()},
        )
    return exc


# ---------------------------------------------------------------------- migration


def migrate(conn: libvirt.virConnect, vm_uuid: str, destination_uri: str) -> str | None:
    """Migrate to another host's libvirt (peer to peer); None when the VM is not here."""
    dom = lookup(conn, vm_uuid)
    if dom is None:
        return None
    flags = (
        libvirt.VIR_MIGRATE_PEER2PEER | libvirt.VIR_MIGRATE_PERSIST_DEST | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
    )
    flags |= libvirt.VIR_MIGRATE_LIVE if dom.isActive() else libvirt.VIR_MIGRATE_OFFLINE
    dom.migrateToURI3(destination_uri, {}, flags)
    return "Running" if flags & libvirt.VIR_MIGRATE_LIVE else "Stopped"


def state_at(uri: str, vm_uuid: str) -> str:
    """The VM's state on another host's libvirt (a repeated migration finds it there)."""
    other = libvirt.openReadOnly(uri)
    try:
        return state(other, vm_uuid)
    finally:
        other.close()
