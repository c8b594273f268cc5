"""The KVM agent's migration helpers (agents/kvm/vms.py); the real thing is
tests/system/test_kvm_migrate.py."""

from __future__ import annotations

import libvirt
import pytest

from agents.kvm import domxml, vms
from tests.system.kvmsupport import vm_spec, volume


@pytest.mark.parametrize(
    ("destination", "uri"),
    [
        ("qemu+tcp://10.0.0.2/system", "tcp://10.0.0.2"),
        ("qemu+ssh://root@host-2.example:2222/system", "tcp://host-2.example"),
        ("qemu+tls://[fd00::2]/system", "tcp://[fd00::2]"),
        ("qemu:///system", None),  # local: libvirt's choice
        ("qemu+unix:///system?socket=/run/x/libvirt-sock", None),
        ("test:///default", None),
    ],
)
def test_the_memory_goes_to_the_address_the_destination_libvirt_is_reached_at(destination, uri):
    assert vms.migration_uri(destination) == uri


def test_only_written_files_need_shared_storage():
    spec = vm_spec("/ps/volumes/root.qcow2", data_volumes=[volume("/ps/volumes/data.qcow2", 1, "Data")])
    xml = domxml.domain_xml(spec, domain_type="qemu")
    cdrom = '<disk type="file" device="cdrom"><source file="/iso/x.iso"/><readonly/></disk>'
    xml = xml.replace("<devices>", f"<devices>{cdrom}")
    assert vms.disk_files(xml) == ["/ps/volumes/root.qcow2", "/ps/volumes/data.qcow2"]


def test_shared_paths_vouch_only_for_files_below_them(tmp_path):
    shared = tmp_path / "ps"
    (tmp_path / "ps-other").mkdir()
    (shared / "volumes").mkdir(parents=True)
    (tmp_path / "link").symlink_to(shared)
    files = [str(shared / "volumes/a.qcow2"), str(tmp_path / "link/volumes/b.qcow2")]
    assert vms.on_shared_paths(files, [str(shared)])
    assert vms.on_shared_paths(files, ["/elsewhere", str(tmp_path / "link")])
    assert not vms.on_shared_paths([*files, str(tmp_path / "ps-other/c.qcow2")], [str(shared)])
    assert not vms.on_shared_paths(files, [])  # nothing configured: libvirt judges


@pytest.mark.parametrize(
    ("event", "detail", "state", "reason"),
    [
        ("STARTED", "STARTED_MIGRATED", None, ""),  # an incoming migration begins; not running yet
        ("RESUMED", "RESUMED_MIGRATED", "Running", "resumed after migration"),
        ("STOPPED", "STOPPED_MIGRATED", "Absent", "migrated away"),
    ],
)
def test_migration_events(event, detail, state, reason):
    code = getattr(libvirt, f"VIR_DOMAIN_EVENT_{event}")
    assert vms.event_state(code, getattr(libvirt, f"VIR_DOMAIN_EVENT_{detail}")) == (state, reason)
