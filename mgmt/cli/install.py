"""``ringstack-ctl install``: the Ansible playbooks run for the operator.

All-in-one (no inventory): ``allinone.yml`` on this machine (``-c local``): one management node under
``--root``, run by the Python running this command, against the broker, database and namespace of
the current configuration (``--config``, ``RINGSTACK_*``). With ``-i INVENTORY``: ``cluster.yml``
over SSH (see ``ansible/inventory/example.ini``). Variables go to Ansible in a 0600 file (they
hold passwords), never in argv; ``-e key=value`` adds or overrides one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mgmt.config import NodeConfig
from mgmt.deploy import ALLINONE_PLAYBOOK, ANSIBLE_DIR, CLUSTER_PLAYBOOK, SOURCE_ANSIBLE_DIR

RECAP = re.compile(r"^(\S+)\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)


class InstallError(Exception):
    pass


def ansible_playbook() -> str:
    beside = Path(sys.executable).parent / "ansible-playbook"
    found = str(beside) if beside.exists() else shutil.which("ansible-playbook")
    if not found:
        raise InstallError("ansible-playbook is not installed: pip install 'ringstack[kvm]' (ansible-core)")
    return found


def allinone_vars(config: NodeConfig, root: Path) -> dict[str, Any]:
    variables: dict[str, Any] = {
        "ringstack_root": str(root),
        "ringstack_python": sys.executable,
        "ringstack_broker_url": config.broker_url,
        "ringstack_database_url": config.database_url,
        "ringstack_namespace": config.namespace,
        "ringstack_node_address": config.node_address,
        "ringstack_ops_address": config.ops_address,
    }
    if ANSIBLE_DIR == SOURCE_ANSIBLE_DIR:  # running from a source tree: the nodes import it too
        variables["ringstack_pythonpath"] = str(SOURCE_ANSIBLE_DIR.parent)
    return variables


def parse_extra(pairs: Sequence[str]) -> dict[str, Any]:
    """``key=value`` pairs; a value that parses as JSON is taken as such (numbers, lists, tables)."""
    extra: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InstallError(f"expected key=value, not {pair!r}")
        try:
            extra[key] = json.loads(value)
        except ValueError:
            extra[key] = value
    return extra


def run(
    variables: dict[str, Any], inventory: str | None, check: bool = False, verbose: bool = False
) -> tuple[int, dict[str, int], float]:
    """Run the playbook; its exit code, each host's changed count, the seconds it took."""
    playbook = CLUSTER_PLAYBOOK if inventory else ALLINONE_PLAYBOOK
    with tempfile.TemporaryDirectory(prefix="ringstack-install-") as work:
        vars_file = Path(work) / "vars.json"
        vars_file.touch(mode=0o600)
        vars_file.write_text(json.dumps(variables))
        (Path(work) / "ansible.cfg").write_text("")
        argv = [ansible_playbook(), str(playbook), "-e", f"@{vars_file}"]
        argv += ["-i", inventory] if inventory else ["-i", "localhost,", "-c", "local"]
        if check:
            argv.append("--check")
        if verbose:
            argv.append("-v")
        env = {
            **os.environ,
            "ANSIBLE_CONFIG": str(Path(work) / "ansible.cfg"),
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_RETRY_FILES_ENABLED": "False",
            "ANSIBLE_PIPELINING": "True",
            "ANSIBLE_LOCAL_TEMP": str(Path(work) / "tmp"),
        }
        if not inventory:
            env["ANSIBLE_PYTHON_INTERPRETER"] = sys.executable
        started = time.monotonic()
        proc = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            lines.append(line)
        code = proc.wait()
    recap = {m.group(1): int(m.group(3)) for m in RECAP.finditer("".join(lines))}
    return code, recap, time.monotonic() - started
