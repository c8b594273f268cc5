"""What the management node ships to the machines it manages: the Ansible playbooks and roles of
the top-level ``ansible/`` folder.

``allinone.yml`` and ``cluster.yml`` install management nodes (``ringstack-ctl install``).
``kvm-host.yml`` (its role in ``roles/kvm_agent``) is what ``AddKVMHost``/``ReconnectHost`` run over
SSH (``mgmt.core.hostdeploy``). A source tree (and an editable install) uses ``ansible/`` in place;
an installed ringstack has a copy as data files in ``<prefix>/share/ringstack/ansible`` (setup.cfg's
``data_files``): ``ANSIBLE_DIR`` is the first of these that exists.
"""

from __future__ import annotations

import site
import sys
from pathlib import Path

SOURCE_ANSIBLE_DIR = Path(__file__).resolve().parents[2] / "ansible"
INSTALLED = Path("share") / "ringstack" / "ansible"


def _find() -> Path:
    for candidate in (
        SOURCE_ANSIBLE_DIR,
        Path(sys.prefix) / INSTALLED,
        Path(site.USER_BASE or "") / INSTALLED,
    ):
        if (candidate / "kvm-host.yml").is_file():
            return candidate
    return SOURCE_ANSIBLE_DIR  # missing everywhere: errors then name the source-tree path


ANSIBLE_DIR = _find()
KVM_HOST_PLAYBOOK = ANSIBLE_DIR / "kvm-host.yml"
ALLINONE_PLAYBOOK = ANSIBLE_DIR / "allinone.yml"
CLUSTER_PLAYBOOK = ANSIBLE_DIR / "cluster.yml"
