"""Running the VR's commands: argv lists only (never a shell), counted per program.

The counts let tests and the benchmark prove how many processes a change cost (one
``iptables-restore`` per table, zero dnsmasq restarts).
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Result:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


@dataclass
class Runner:
    spawned: Counter[str] = field(default_factory=Counter)

    async def run(self, argv: list[str], *, stdin: str | None = None, timeout: float = 60) -> Result:
        self.spawned[os.path.basename(argv[0])] += 1
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(
                proc.communicate(stdin.encode() if stdin is not None else None), timeout
            )
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return Result(tuple(argv), -9, "", f"timed out after {timeout} s")
        return Result(
            tuple(argv), proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")
        )
