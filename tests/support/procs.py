"""Real management-node processes for tests: started with ``ringstack-ctl start``, stopped with
signals (SIGTERM to drain, SIGKILL to crash), their log kept for the failure message."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CTL = [sys.executable, "-m", "mgmt.cli.ctl"]
CLI = [sys.executable, "-m", "mgmt.cli.client"]


class NodeProcess:
    def __init__(self, env: Mapping[str, str], name: str = "node", cwd: Path = ROOT) -> None:
        """``cwd``: the source tree to run (``python -m`` imports from the working directory first);
        another release's tree needs its ``PYTHONPATH`` in ``env`` too."""
        self.name = name
        self.lines: list[str] = []
        self._ready = threading.Event()
        full_env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", **env}
        self.proc = subprocess.Popen(
            [*CTL, "start"],
            cwd=cwd,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if " ready: " in line:
                self._ready.set()
        self._ready.set()  # the process ended: wake waiters, who check returncode

    @property
    def log(self) -> str:
        return "\n".join(self.lines[-200:])

    def wait_ready(self, timeout: float = 30) -> NodeProcess:
        if not self._ready.wait(timeout) or self.proc.poll() is not None:
            raise AssertionError(f"{self.name} did not become ready:\n{self.log}")
        return self

    def wait_for_line(self, text: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if text in line:
                    return line
            if self.proc.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.02)
        raise AssertionError(f"{self.name}: no line containing {text!r}:\n{self.log}")

    def terminate(self, timeout: float = 60) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> int:
        self.proc.kill()
        return self.proc.wait(10)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._reader.join(5)


def node_env(database_url: str, namespace: str, broker_url: str, **extra: str) -> dict[str, str]:
    env = {
        "RINGSTACK_DATABASE_URL": database_url,
        "RINGSTACK_NAMESPACE": namespace,
        "RINGSTACK_BROKER_URL": broker_url,
        "RINGSTACK_CONFIG": "/dev/null",  # an empty TOML file: no stray /etc/ringstack config
    }
    env.update({f"RINGSTACK_{k.upper()}": v for k, v in extra.items()})
    return env


def run_cli(args: list[str], env: Mapping[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        check=False,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
