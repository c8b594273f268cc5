"""The systemd unit the ringstack_node role installs where systemd runs the machine (no systemd
here to run it): rendered from the role's template, systemd's own checker finds nothing to say,
and the exit codes match ringstack-ctl start's (75 restarts, 5 is a stop, not a crash)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import jinja2
import pytest

from mgmt.cli.supervise import EXIT_RESTART, EXIT_UNDRAINED

ROLE = Path(__file__).resolve().parents[2] / "ansible" / "roles" / "ringstack_node"


def render(**variables: object) -> str:
    template = (ROLE / "templates" / "ringstack-node.service.j2").read_text()
    defaults: dict[str, object] = {
        "ringstack_python": sys.executable,
        "ringstack_config_path": "/opt/ringstack/etc/ringstack.toml",
        "ringstack_pythonpath": "",
        "ringstack_settings": {},
    }
    return jinja2.Template(template, trim_blocks=True).render({**defaults, **variables})


def test_exit_codes_match_the_supervisor() -> None:
    unit = render()
    assert f"RestartPreventExitStatus={EXIT_UNDRAINED}" in unit and "Restart=on-failure" in unit
    assert EXIT_RESTART not in (0, EXIT_UNDRAINED)  # on-failure restarts it
    assert "TimeoutStopSec=60" in unit  # drain_timeout 30 s + 30
    assert "TimeoutStopSec=120" in render(ringstack_settings={"drain_timeout": 90})
    assert "PYTHONPATH" not in unit and "Environment=PYTHONPATH=/src" in render(ringstack_pythonpath="/src")


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="needs systemd-analyze")
def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    path = tmp_path / "ringstack-node.service"
    path.write_text(render(ringstack_pythonpath="/src"))
    checked = subprocess.run(
        ["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert checked.returncode == 0 and str(path) not in checked.stderr, checked.stderr
