"""What the management node ships to the machines it manages, as package data (so an installed
ringstack has it, not only a source tree).

``ansible/kvm-host.yml``: the KVM host playbook (its role in ``ansible/roles/kvm_agent``) that
``AddKVMHost``/``ReconnectHost`` run over SSH (``mgmt.core.hostdeploy``).
"""

from __future__ import annotations

from pathlib import Path

ANSIBLE_DIR = Path(__file__).resolve().parent / "ansible"
KVM_HOST_PLAYBOOK = ANSIBLE_DIR / "kvm-host.yml"
