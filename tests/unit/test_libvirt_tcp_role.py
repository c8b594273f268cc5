"""The KVM host role's libvirt TCP listener (``roles/kvm_agent/tasks/libvirt_tcp.yml``), run for real
by ansible-playbook on this machine against scratch copies of the files it edits (a host without
systemd: the files only, no service touched): it configures libvirtd to listen on TCP without
authentication, keeps the rest of the file, and a second run changes nothing."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

from mgmt.config import KVM_PLAYBOOK_VARS
from mgmt.deploy import ANSIBLE_DIR

DEBIAN_LIBVIRTD_CONF = """# Master libvirt daemon configuration file
#listen_tls = 0
#listen_tcp = 1
#tcp_port = "16509"
#auth_tcp = "sasl"
unix_sock_group = "libvirt"
"""


def run_role_tasks(tmp_path: Path, conf: Path, defaults: Path) -> dict[str, int]:
    playbook = tmp_path / "play.yml"
    playbook.write_text(
        yaml.safe_dump(
            [
                {
                    "hosts": "all",
                    "gather_facts": False,
                    "vars": {"host_probe": {"systemd": False}},
                    "tasks": [
                        {
                            "name": "the role's libvirt TCP tasks",
                            "ansible.builtin.include_role": {
                                "name": "kvm_agent",
                                "tasks_from": "libvirt_tcp",
                            },
                        }
                    ],
                }
            ]
        )
    )
    extra = {"libvirtd_conf_path": str(conf), "libvirtd_defaults_path": str(defaults)}
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "ansible-playbook"),
            "-i",
            "localhost,",
            "-c",
            "local",
            "-e",
            json.dumps(extra),
            str(playbook),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={
            "PATH": "/usr/bin:/bin",
            "ANSIBLE_ROLES_PATH": str(ANSIBLE_DIR / "roles"),
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-tmp"),
            "ANSIBLE_PYTHON_INTERPRETER": sys.executable,
            "HOME": str(tmp_path),
        },
        check=False,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    recap = re.search(r"localhost\s*:.*\bchanged=(\d+).*\bfailed=(\d+)", done.stdout)
    assert recap is not None, done.stdout[-4000:]
    return {"changed": int(recap[1]), "failures": int(recap[2])}


def test_libvirtd_listens_on_tcp_without_auth_and_a_second_run_changes_nothing(tmp_path):
    conf, defaults = tmp_path / "libvirtd.conf", tmp_path / "default-libvirtd"
    conf.write_text(DEBIAN_LIBVIRTD_CONF)

    first = run_role_tasks(tmp_path, conf, defaults)
    assert first["failures"] == 0 and first["changed"] > 0
    lines = conf.read_text().splitlines()
    assert "listen_tcp = 1" in lines and 'auth_tcp = "none"' in lines
    assert "#listen_tcp = 1" not in lines and '#auth_tcp = "sasl"' not in lines  # replaced in place
    assert '#tcp_port = "16509"' in lines and 'unix_sock_group = "libvirt"' in lines  # the rest kept
    assert defaults.read_text() == 'libvirtd_opts="--listen"\n'  # no socket activation here

    before = conf.read_text()
    assert run_role_tasks(tmp_path, conf, defaults) == {"changed": 0, "failures": 0}
    assert conf.read_text() == before


def test_the_listener_is_on_by_default_and_a_node_may_turn_it_off():
    defaults = yaml.safe_load((ANSIBLE_DIR / "roles/kvm_agent/defaults/main.yml").read_text())
    assert defaults["libvirt_listen_tcp"] is True
    assert "libvirt_listen_tcp" in KVM_PLAYBOOK_VARS
    main = yaml.safe_load((ANSIBLE_DIR / "roles/kvm_agent/tasks/main.yml").read_text())
    (include,) = [t for t in main if t.get("ansible.builtin.include_tasks") == "libvirt_tcp.yml"]
    assert include["when"] == "libvirt_listen_tcp | bool"
