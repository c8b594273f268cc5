"""`ringstack-ctl install` all-in-one on this machine, under a temporary prefix (nothing of the
machine's /etc or services touched): the node comes up under ringstack-ctl's supervision with the
current configuration's broker, database and namespace; a second run changes nothing."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from mgmt.cli.install import ansible_playbook
from mgmt.cli.supervise import read_state
from tests.integration.test_ops import ctl
from tests.support.procs import node_env


def _has_ansible() -> bool:
    try:
        ansible_playbook()
    except Exception:
        return False
    return True


@pytest.mark.skipif(not _has_ansible(), reason="needs ansible-core")
def test_install_allinone_twice(database_url, namespace, broker_url, tmp_path: Path):
    env = node_env(database_url, namespace, broker_url, ops_address="127.0.0.1:0")
    root = tmp_path / "prefix"
    args = ["install", "--root", str(root), "-e", "ringstack_supervisor=ringstack-ctl"]
    try:
        started = time.monotonic()
        first = ctl(args, env, timeout=600)
        first_seconds = time.monotonic() - started
        assert first.returncode == 0, first.stdout[-4000:] + first.stderr
        state = read_state(root / "run")
        assert state is not None and state.state == "ready"
        config = (root / "etc" / "ringstack.toml").read_text()
        assert (
            f'namespace = "{namespace}"' in config
            and oct((root / "etc" / "ringstack.toml").stat().st_mode & 0o777) == "0o600"
        )
        status = ctl(["status", "-f", "json"], env)
        assert state.nodeUuid in status.stdout, status.stdout
        started = time.monotonic()
        second = ctl(args, env, timeout=600)
        second_seconds = time.monotonic() - started
        assert second.returncode == 0 and ", 0 change(s)" in second.stdout, second.stdout[-4000:]
        assert read_state(root / "run").nodePid == state.nodePid  # type: ignore[union-attr]
    finally:
        ctl(["stop", "--run-dir", str(root / "run")], env)
    assert read_state(root / "run") is None
    print(f"install all-in-one: {first_seconds:.1f} s, second run {second_seconds:.1f} s (0 changes)")
