"""The Ansible playbooks live in the top-level ``ansible/`` folder and ship as data files
(``<prefix>/share/ringstack/ansible``), so an installed node finds them as well as a source tree
does: every file of the folder is matched by one of setup.cfg's ``data_files`` lines, into the
folder of the same relative path. (tests/integration/test_packaging.py builds and installs a wheel.)"""

from __future__ import annotations

import configparser
import glob
from pathlib import Path

from mgmt.core.hostdeploy import PLAYBOOK
from mgmt.deploy import ANSIBLE_DIR, INSTALLED, KVM_HOST_PLAYBOOK

ROOT = Path(__file__).resolve().parents[2]


def test_the_playbook_is_found_in_the_source_tree() -> None:
    assert ANSIBLE_DIR == ROOT / "ansible"
    assert PLAYBOOK == KVM_HOST_PLAYBOOK == ANSIBLE_DIR / "kvm-host.yml"
    assert KVM_HOST_PLAYBOOK.is_file()
    assert (ANSIBLE_DIR / "roles/kvm_agent/tasks/main.yml").is_file()


def test_every_playbook_file_is_a_data_file_in_its_place() -> None:
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    installed: dict[str, str] = {}  # source file -> the folder it is installed in
    for target, patterns in setup["options.data_files"].items():
        for pattern in filter(None, (p.strip() for p in patterns.replace("\n", ",").split(","))):
            for name in glob.glob(pattern, root_dir=ROOT):
                installed[name] = target
    files = [
        p.relative_to(ROOT) for p in ANSIBLE_DIR.rglob("*") if p.is_file() and "__pycache__" not in p.parts
    ]
    assert len(files) >= 7
    for path in files:
        assert str(path) in installed, f"{path} is not installed"
        assert installed[str(path)] == str(INSTALLED / path.parent.relative_to("ansible")).rstrip("/."), path
