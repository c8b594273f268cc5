"""Building ringstack prints no warning (setuptools used to warn six times about
``mgmt.deploy.ansible`` not being a package), and an installed wheel finds its playbooks in
``<prefix>/share/ringstack/ansible``, outside any source tree."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(*cmd: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    # No PYTHONPATH: the installed copy must be found on its own, not this source tree.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False
    )


def test_wheel_builds_cleanly_and_its_playbooks_are_found(tmp_path):
    # Build from a copy, so the source tree gets no build/ or egg-info of another version.
    src = tmp_path / "src"
    listed = run("git", "ls-files", "-co", "--exclude-standard").stdout.split()
    for name in listed:
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            (src / name).write_bytes((ROOT / name).read_bytes())
    built = run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", tmp_path / "dist", src, cwd=tmp_path)
    assert built.returncode == 0, built.stderr[-3000:]
    output = (built.stdout + built.stderr).lower()
    assert "warning" not in output, output[-3000:]
    wheel = next((tmp_path / "dist").glob("ringstack-*.whl"))

    venv = tmp_path / "venv"
    assert run(sys.executable, "-m", "venv", "--without-pip", venv).returncode == 0
    installed = run(sys.executable, "-m", "pip", "install", "--no-deps", "--prefix", venv, wheel)
    assert installed.returncode == 0, installed.stderr[-3000:]
    found = run(
        venv / "bin" / "python",
        "-c",
        "from mgmt.deploy import ANSIBLE_DIR, KVM_HOST_PLAYBOOK; print(ANSIBLE_DIR); print(KVM_HOST_PLAYBOOK.is_file())",
        cwd=tmp_path,
    )
    assert found.returncode == 0, found.stderr
    where, exists = found.stdout.split()
    assert Path(where) == venv / "share" / "ringstack" / "ansible" and exists == "True"
    assert (Path(where) / "roles/kvm_agent/tasks/main.yml").is_file()


def test_editable_install_is_quiet(tmp_path):
    """scripts/lib.sh installs the tree editable with -q: nothing may be printed (it used to print
    setuptools' warnings about mgmt.deploy.ansible and the editable import hook)."""
    src = tmp_path / "src"
    for name in run("git", "ls-files", "-co", "--exclude-standard").stdout.split():
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            (src / name).write_bytes((ROOT / name).read_bytes())
    done = run(
        sys.executable,
        "-m",
        "pip",
        "install",
        "-q",
        "--no-deps",
        "-e",
        src,
        "--prefix",
        tmp_path / "p",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    printed = [
        line for line in (done.stdout + done.stderr).splitlines() if not line.startswith("WARNING: Location")
    ]
    assert printed == []
