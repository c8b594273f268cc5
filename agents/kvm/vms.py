"""Domain operations, each a blocking function of a libvirt connection (run in the pool by
``Hypervisor.call``), each idempotent: it reads the domain's state and acts only when needed.
"""

from __future__ import annotations

import os
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Sequence

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
    if event == libvirt.VIR_DOMAIN_EVENT_STARTED and detail == libvirt.VIR_DOMAIN_EVENT_STARTED_MIGRATED:
        return None, ""  # an incoming migration begins: the guest runs here once it is resumed
    # Resumed by a migration: at the destination when it completed, at the source when it failed.
    if event == libvirt.VIR_DOMAIN_EVENT_RESUMED and detail == libvirt.VIR_DOMAIN_EVENT_RESUMED_MIGRATED:
        return "Running", "resumed after migration"
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


def start(conn: libvirt.virConnect, vm_uuid: str, xml: str) -> bool:
    """Define (or redefine, with the latest spec) and start; a running VM is left alone. Whether
    anything changed (the VM now runs: ``Running``)."""
    dom = lookup(conn, vm_uuid)
    if dom is not None and dom.isActive():
        if state_of(dom) == "Paused":
            dom.resume()
            return True
        return False
    dom = conn.defineXML(xml)
    dom.create()
    return True


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


def undefine(conn: libvirt.virConnect, vm_uuid: str) -> bool:
    """Power off and forget the VM; False when it was not here."""
    dom = lookup(conn, vm_uuid)
    if dom is None:
        return False
    if dom.isActive():
        destroy(conn, vm_uuid)
    try:
        dom.undefineFlags(
            libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
        )
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return False
        if exc.get_error_code() not in UNSUPPORTED:
            raise
        dom.undefine()
    return True


# ---------------------------------------------------------------------- devices


def attach(conn: libvirt.virConnect, dom: libvirt.virDomain, device: ET.Element, present: str | None) -> bool:
    """Add a device to the running domain (hot-plug) and to its persistent definition, each only
    where it is missing; whether it was missing anywhere. ``present`` is the XML of the live
    domain, to check."""
    xml = domxml.element_xml(device)
    changed = False
    if dom.isActive() and not _has(present or dom.XMLDesc(0), device):
        try:
            dom.attachDeviceFlags(xml, libvirt.VIR_DOMAIN_AFFECT_LIVE)
        except libvirt.libvirtError as exc:
            raise _no_hotplug(exc, "attach") from None
        changed = True
    inactive = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    if not _has(inactive, device):
        conn.defineXML(domxml.with_device(inactive, device))
        changed = True
    return changed


def detach(conn: libvirt.virConnect, dom: libvirt.virDomain, device: ET.Element) -> bool:
    """Remove a device from the running domain and from the persistent definition, where present;
    whether it was present anywhere."""
    changed = False
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
            changed = True
    inactive = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    if _has(inactive, device):
        conn.defineXML(domxml.without_device(inactive, device.tag, device))
        changed = True
    return changed


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

# What a migration always asks of libvirt: the source's libvirtd talks to the destination's itself
# (peer to peer: the agent's connection may drop meanwhile), the destination keeps the definition
# and the source drops its own, so the VM is defined on exactly one host afterwards.
MIGRATE_FLAGS = (
    libvirt.VIR_MIGRATE_PEER2PEER | libvirt.VIR_MIGRATE_PERSIST_DEST | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
)


def migration_uri(destination_uri: str) -> str | None:
    """Where QEMU sends the guest's memory: ``tcp://`` the address the destination's libvirt is
    reached at (as ZStack's agent does). Left to libvirt, the destination names itself by its
    hostname, which often resolves to nothing or to 127.0.0.1; a local URI has no address: None."""
    host = urllib.parse.urlsplit(destination_uri).hostname
    if not host:
        return None
    return f"tcp://[{host}]" if ":" in host else f"tcp://{host}"


def disk_files(xml: str) -> list[str]:
    """The files the domain writes to (read-only disks and empty drives need no shared storage)."""
    files = []
    for disk in ET.fromstring(xml).iterfind("devices/disk"):
        source = disk.find("source")
        if disk.find("readonly") is None and source is not None and source.get("file"):
            files.append(source.get("file", ""))
    return files


def on_shared_paths(files: list[str], shared_paths: Sequence[str]) -> bool:
    """Whether every file lies under one of the directories this host shares with its peers."""
    roots = [os.path.realpath(p) for p in shared_paths]
    return bool(roots) and all(
        any(os.path.commonpath([os.path.realpath(f), root]) == root for root in roots) for f in files
    )


def migrate(
    conn: libvirt.virConnect,
    vm_uuid: str,
    destination_uri: str,
    shared_paths: Sequence[str] = (),
    *,
    storage_shared: bool = False,
) -> str | None:
    """Move the VM to another host's libvirt: live when it runs (its state there is the state it
    had here), offline (its definition only) when it does not. None when the VM is not here.

    libvirt refuses a live migration of disks on a filesystem it does not know to be shared
    (VIR_ERR_MIGRATE_UNSAFE, "Migration without shared storage is unsafe"); NFS it recognises.
    Disks under ``shared_paths`` (the agent's ``migration_shared_paths``: storage shared in a way
    libvirt cannot see) are vouched for by the operator, and the check is waived for them; so it
    is when the command says so (``storage_shared``: the management side knows every volume of the
    VM is on NFS or a shared mount point)."""
    dom = lookup(conn, vm_uuid)
    if dom is None:
        return None
    params: dict[str, str] = {}
    if dom.isActive():
        before = state_of(dom)
        flags = MIGRATE_FLAGS | libvirt.VIR_MIGRATE_LIVE
        uri = migration_uri(destination_uri)
        if uri is not None:
            params[libvirt.VIR_MIGRATE_PARAM_URI] = uri
        if storage_shared or on_shared_paths(disk_files(dom.XMLDesc(0)), shared_paths):
            flags |= libvirt.VIR_MIGRATE_UNSAFE
    else:
        before = "Stopped"
        flags = MIGRATE_FLAGS | libvirt.VIR_MIGRATE_OFFLINE
    dom.migrateToURI3(destination_uri, params, flags)
    return before


def state_at(uri: str, vm_uuid: str) -> str:
    """The VM's state on another host's libvirt (a repeated migration finds it there)."""
    other = libvirt.openReadOnly(uri)
    try:
        return state(other, vm_uuid)
    finally:
        other.close()
