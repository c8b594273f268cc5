"""Domain XML from a ``VmSpec`` (ElementTree, as ZStack's ``make_*`` helpers), and the look-ups the
agent needs in libvirt's XML: a disk by its file, a NIC by its MAC, the VNC port.

A VM's libvirt domain is named after the VM's uuid and has it as its libvirt uuid, so the agent
finds its domains without a table of its own, and ``virsh list`` shows what the API calls the VM;
the VM's display name is the domain's ``<title>``.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from agents.kvm.secgroup import vnic_name
from schema.agent import NicSpec, VmSpec, VolumeSpec

# What makes a domain one of ours: named by a VM uuid (libvirt's own default domains are not).
VM_NAME = re.compile(r"^[0-9a-f]{32}$")


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attrs)
    if text is not None:
        element.text = text
    return element


def target_dev(device_id: int) -> str:
    """virtio disk names: 0 -> vda, 25 -> vdz, 26 -> vdaa (the kernel's own scheme)."""
    letters = ""
    n = device_id + 1
    while n:
        n, rem = divmod(n - 1, 26)
        letters = chr(ord("a") + rem) + letters
    return "vd" + letters


def disk_element(volume: VolumeSpec) -> ET.Element:
    disk = ET.Element("disk", {"type": "file", "device": "disk"})
    _sub(disk, "driver", name="qemu", type=volume.format)
    _sub(disk, "source", file=volume.install_path)
    _sub(disk, "target", dev=target_dev(volume.device_id), bus="virtio")
    return disk


def nic_element(nic: NicSpec) -> ET.Element:
    interface = ET.Element("interface", {"type": "bridge"})
    _sub(interface, "mac", address=nic.mac)
    _sub(interface, "source", bridge=nic.l2.bridge_name)
    # A known tap name: security-group chains match it (physdev) before the VM even starts.
    _sub(interface, "target", dev=vnic_name(nic.uuid))
    _sub(interface, "model", type="virtio")
    return interface


def _os(domain: ET.Element, spec: VmSpec) -> None:
    os_ = _sub(domain, "os")
    _sub(os_, "type", "hvm")
    if spec.kernel:  # images that are a kernel and an initrd (tests) boot directly
        _sub(os_, "kernel", spec.kernel)
        if spec.initrd:
            _sub(os_, "initrd", spec.initrd)
        if spec.kernel_args:
            _sub(os_, "cmdline", spec.kernel_args)
    else:
        _sub(os_, "boot", dev="hd")


def _console(devices: ET.Element, log_file: str | None) -> None:
    # A serial console always: `virsh console` works, and its output can be logged to a file.
    serial = _sub(devices, "serial", type="pty")
    if log_file:
        _sub(serial, "log", file=log_file, append="off")
    _sub(serial, "target", port="0")
    console = _sub(devices, "console", type="pty")
    _sub(console, "target", type="serial", port="0")


def domain_xml(
    spec: VmSpec, *, domain_type: str, vnc_listen: str = "0.0.0.0", console_log: str | None = None
) -> str:
    domain = ET.Element("domain", {"type": domain_type})
    _sub(domain, "name", spec.uuid)
    _sub(domain, "uuid", spec.uuid)
    _sub(domain, "title", spec.name)
    _sub(domain, "description", "ringstack VM")
    kib = str(-(-spec.memory_size // 1024))
    _sub(domain, "memory", kib, unit="KiB")
    _sub(domain, "currentMemory", kib, unit="KiB")
    _sub(domain, "vcpu", str(spec.cpu_num), placement="static")
    _os(domain, spec)
    features = _sub(domain, "features")
    _sub(features, "acpi")  # without it an ACPI shutdown (graceful stop) reaches no one
    _sub(features, "apic")
    if domain_type == "kvm":
        _sub(domain, "cpu", mode="host-model")
    _sub(domain, "clock", offset="utc")
    _sub(domain, "on_poweroff", "destroy")
    _sub(domain, "on_reboot", "restart")
    _sub(domain, "on_crash", "destroy")
    devices = _sub(domain, "devices")
    for volume in [spec.root_volume, *spec.data_volumes]:
        devices.append(disk_element(volume))
    for nic in sorted(spec.nics, key=lambda n: n.device_id):
        devices.append(nic_element(nic))
    if spec.console == "vnc":
        _sub(devices, "graphics", type="vnc", port="-1", autoport="yes", listen=vnc_listen)
    _console(devices, console_log)
    return ET.tostring(domain, encoding="unicode")


# ---------------------------------------------------------------------- reading libvirt's XML


def find_disk(xml: str, install_path: str) -> ET.Element | None:
    for disk in ET.fromstring(xml).iterfind("devices/disk"):
        source = disk.find("source")
        if source is not None and source.get("file") == install_path:
            return disk
    return None


def find_nic(xml: str, mac: str) -> ET.Element | None:
    for interface in ET.fromstring(xml).iterfind("devices/interface"):
        address = interface.find("mac")
        if address is not None and (address.get("address") or "").lower() == mac.lower():
            return interface
    return None


def with_device(xml: str, device: ET.Element) -> str:
    """The domain XML with one more device (for the persistent definition)."""
    domain = ET.fromstring(xml)
    devices = domain.find("devices")
    if devices is None:
        devices = _sub(domain, "devices")
    devices.append(device)
    return ET.tostring(domain, encoding="unicode")


def without_device(xml: str, tag: str, match: ET.Element) -> str:
    """The domain XML without the device equal (by its identifying child) to ``match``."""
    domain = ET.fromstring(xml)
    devices = domain.find("devices")
    if devices is None:
        return xml
    for device in list(devices.iterfind(tag)):
        if _same_device(device, match):
            devices.remove(device)
    return ET.tostring(domain, encoding="unicode")


def _same_device(a: ET.Element, b: ET.Element) -> bool:
    if a.tag == "disk":
        key_a, key_b = a.find("source"), b.find("source")
        return key_a is not None and key_b is not None and key_a.get("file") == key_b.get("file")
    key_a, key_b = a.find("mac"), b.find("mac")
    return (
        key_a is not None
        and key_b is not None
        and (key_a.get("address") or "").lower() == (key_b.get("address") or "").lower()
    )


def vnc_port(xml: str) -> int | None:
    graphics = ET.fromstring(xml).find("devices/graphics[@type='vnc']")
    if graphics is None:
        return None
    port = int(graphics.get("port", "-1"))
    return port if port > 0 else None


def element_xml(element: ET.Element) -> str:
    return ET.tostring(element, encoding="unicode")
