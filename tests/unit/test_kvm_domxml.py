"""Domain XML from a VmSpec, and the look-ups the agent makes in libvirt's XML."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from agents.kvm import domxml, vms
from tests.system.kvmsupport import MiB, nic, vm_spec, volume


@pytest.mark.parametrize(
    ("device_id", "dev"), [(0, "vda"), (1, "vdb"), (25, "vdz"), (26, "vdaa"), (27, "vdab")]
)
def test_disk_names_follow_the_kernel(device_id, dev):
    assert domxml.target_dev(device_id) == dev


def test_a_vm_spec_becomes_a_complete_domain():
    spec = vm_spec("/ps/volumes/root.qcow2", nics=[nic("fa:16:3e:00:00:02", device_id=1), nic()], cpu_num=2)
    spec.data_volumes.append(volume("/ps/volumes/data.qcow2", device_id=1, kind="Data"))
    spec.memory_size = 100 * MiB + 1  # rounded up to whole KiB
    dom = ET.fromstring(domxml.domain_xml(spec, domain_type="kvm", console_log="/var/log/c.log"))
    assert dom.get("type") == "kvm" and dom.findtext("name") == spec.uuid == dom.findtext("uuid")
    assert dom.findtext("title") == spec.name and dom.findtext("vcpu") == "2"
    assert dom.findtext("memory") == str(100 * 1024 + 1) and dom.find("features/acpi") is not None
    assert dom.find("cpu").get("mode") == "host-model" and dom.find("os/boot").get("dev") == "hd"
    disks = [
        (d.find("source").get("file"), d.find("target").get("dev")) for d in dom.iterfind("devices/disk")
    ]
    assert disks == [("/ps/volumes/root.qcow2", "vda"), ("/ps/volumes/data.qcow2", "vdb")]
    assert all(d.find("driver").get("type") == "qcow2" for d in dom.iterfind("devices/disk"))
    macs = [i.find("mac").get("address") for i in dom.iterfind("devices/interface")]
    assert macs == ["fa:16:3e:00:00:01", "fa:16:3e:00:00:02"]  # in device order
    assert dom.find("devices/interface/source").get("bridge") == "br_eth0"
    assert dom.find("devices/graphics").get("type") == "vnc"
    assert dom.find("devices/serial/log").get("file") == "/var/log/c.log"


def test_kernel_boot_and_no_console_for_qemu():
    spec = vm_spec(kernel="/k/vmlinuz", initrd="/k/initrd", kernel_args="console=ttyS0", console="none")
    dom = ET.fromstring(domxml.domain_xml(spec, domain_type="qemu"))
    assert dom.find("cpu") is None and dom.find("os/boot") is None
    assert [dom.findtext(f"os/{t}") for t in ("kernel", "initrd", "cmdline")] == [
        "/k/vmlinuz",
        "/k/initrd",
        "console=ttyS0",
    ]
    assert dom.find("devices/graphics") is None and dom.find("devices/serial/log") is None


def test_devices_are_found_added_and_removed_by_their_identity():
    spec = vm_spec("/ps/volumes/root.qcow2", nics=[nic("fa:16:3e:00:00:0a")])
    xml = domxml.domain_xml(spec, domain_type="qemu")
    extra = domxml.disk_element(volume("/ps/volumes/x.qcow2", device_id=1))
    more = domxml.with_device(xml, extra)
    assert domxml.find_disk(more, "/ps/volumes/x.qcow2") is not None
    assert domxml.find_nic(more, "FA:16:3E:00:00:0A") is not None  # MACs compare without case
    less = domxml.without_device(more, "disk", extra)
    assert domxml.find_disk(less, "/ps/volumes/x.qcow2") is None
    assert domxml.find_disk(less, "/ps/volumes/root.qcow2") is not None
    assert domxml.vnc_port(xml) is None  # autoport: no port until running
    assert domxml.vnc_port(xml.replace('port="-1"', 'port="5901"')) == 5901


def test_only_ringstack_domains_are_ours():
    assert domxml.VM_NAME.match("a" * 32) and not domxml.VM_NAME.match("test")


@pytest.mark.parametrize(
    ("event", "detail", "state"),
    [
        ("STOPPED", "STOPPED_SHUTDOWN", "Stopped"),
        ("STOPPED", "STOPPED_DESTROYED", "Stopped"),
        ("STOPPED", "STOPPED_CRASHED", "Crashed"),
        ("STOPPED", "STOPPED_MIGRATED", "Absent"),
        ("CRASHED", "CRASHED_PANICKED", "Crashed"),
        ("STARTED", "STARTED_BOOTED", "Running"),
        ("SUSPENDED", "SUSPENDED_PAUSED", "Paused"),
        ("RESUMED", "RESUMED_UNPAUSED", "Running"),
        ("UNDEFINED", "UNDEFINED_REMOVED", "Absent"),
        ("DEFINED", "DEFINED_ADDED", None),
        ("SHUTDOWN", "SHUTDOWN_FINISHED", None),
    ],
)
def test_lifecycle_events_map_to_protocol_states(event, detail, state):
    import libvirt

    code = getattr(libvirt, f"VIR_DOMAIN_EVENT_{event}")
    sub = getattr(libvirt, f"VIR_DOMAIN_EVENT_{detail}")
    assert vms.event_state(code, sub)[0] == state
