"""The simulator as a real process for tests, and a client for its control queue."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from typing import Any

from bus.aio import AsyncBus
from tests.support.procs import ROOT


class SimulatorProcess:
    def __init__(self, broker_url: str, namespace: str, name: str = "simulator") -> None:
        self.name = name
        self.namespace = namespace
        self.lines: list[str] = []
        self._ready = threading.Event()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "agents.simulator",
                "--broker-url",
                broker_url,
                "--namespace",
                namespace,
                "--name",
                name,
            ],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if "ready" in line:
                self._ready.set()
        self._ready.set()

    def wait_ready(self, timeout: float = 30) -> SimulatorProcess:
        if not self._ready.wait(timeout) or self.proc.poll() is not None:
            raise AssertionError("simulator did not start:\n" + "\n".join(self.lines[-50:]))
        return self

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


async def control(
    bus: AsyncBus, name: str, body: dict[str, Any], simulator: str = "simulator"
) -> dict[str, Any]:
    return await bus.call(f"{bus.topology.namespace}.{simulator}", f"simulator.{name}", body, timeout=30)
