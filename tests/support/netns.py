"""Network namespaces for tests (hosts, virtual routers, guests, an "outside"), shell commands
that fail loudly, and waiting for a condition without fixed sleeps."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
import uuid as uuidlib
from collections.abc import Callable
from typing import Any


def sh(*argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy, or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


class Netns:
    """A network namespace this test created; deleted (with any process left in it) on close."""

    def __init__(self, prefix: str = "rskt") -> None:
        self.name = f"{prefix}{uuidlib.uuid4().hex[:8]}"
        sh("ip", "netns", "add", self.name)
        self.ip("link", "set", "lo", "up")

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return sh("ip", "-n", self.name, *args, check=check)

    def run(self, *argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", self.name, *argv, check=check, timeout=timeout)

    def has_link(self, name: str) -> bool:
        return self.ip("link", "show", name, check=False).returncode == 0

    def addresses(self, dev: str) -> list[str]:
        out = self.ip("-4", "-o", "addr", "show", "dev", dev).stdout
        return [line.split()[3] for line in out.splitlines()]

    def master(self, dev: str) -> str | None:
        words = self.ip("link", "show", dev).stdout.split()
        return words[words.index("master") + 1] if "master" in words else None

    def pids(self) -> list[int]:
        out = sh("ip", "netns", "pids", self.name, check=False).stdout
        return [int(p) for p in out.split()]

    def close(self) -> None:
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        sh("ip", "netns", "del", self.name, check=False)
