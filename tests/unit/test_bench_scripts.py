"""Every benchmark starts the way people type it (``python bench/x.py``) as well as the way the
README shows it (``python -m bench.x``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted(p.name for p in (ROOT / "bench").glob("*.py") if p.name not in ("__init__.py", "nodes.py"))


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_bench_script_runs_by_its_path_from_anywhere(script: str, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), "--help"],
        cwd=tmp_path,  # not the repository: nothing but the script's own path makes it importable
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout


def test_a_bench_script_runs_as_a_module() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.vm_create", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout
