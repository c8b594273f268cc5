"""The SDK's examples (examples/*.py) run as documented against a real node process."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.support.procs import ROOT, NodeProcess, node_env


@pytest.fixture
def env(database_url, namespace, broker_url):
    return node_env(database_url, namespace, broker_url)


@pytest.mark.parametrize(
    ("example", "expected"),
    [
        ("sync_client.py", ["created zone ", "'name': 'sdk-sync'", "fails with SYS.NOT_FOUND"]),
        ("async_client.py", ["created and saw the events of", "query count: 3", "deleted"]),
    ],
)
def test_example_runs(env, example, expected):
    node = NodeProcess(env)
    try:
        node.wait_ready()
        result = subprocess.run(
            [sys.executable, str(ROOT / "examples" / example)],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), **env},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        node.close()
    assert result.returncode == 0, result.stderr
    for text in expected:
        assert text in result.stdout, result.stdout
