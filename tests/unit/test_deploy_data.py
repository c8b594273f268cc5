"""The KVM host playbook ships inside the package (``mgmt/deploy/ansible``), so an installed node
finds it as well as a source tree does: every file of it is matched by setup.cfg's package_data."""

from __future__ import annotations

import configparser
import glob
from pathlib import Path

from mgmt.core.hostdeploy import PLAYBOOK
from mgmt.deploy import ANSIBLE_DIR, KVM_HOST_PLAYBOOK

ROOT = Path(__file__).resolve().parents[2]


def test_the_playbook_is_found_in_the_package() -> None:
    assert PLAYBOOK == KVM_HOST_PLAYBOOK == ANSIBLE_DIR / "kvm-host.yml"
    assert KVM_HOST_PLAYBOOK.is_file()
    assert (ANSIBLE_DIR / "roles/kvm_agent/tasks/main.yml").is_file()


def test_every_playbook_file_is_package_data() -> None:
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    patterns = [p.strip() for p in setup["options.package_data"]["mgmt.deploy"].split(",")]
    package = ANSIBLE_DIR.parent
    packaged = {name for pattern in patterns for name in glob.glob(pattern, root_dir=package, recursive=True)}
    files = {str(p.relative_to(package)) for p in ANSIBLE_DIR.rglob("*") if p.is_file()}
    assert files and files <= packaged
