"""Cold start of the ``ringstack`` CLI: a whole ``ringstack QueryZone`` as a person runs it.

Method
------
A fresh database and broker namespace (``bench.nodes.environment``) and one real node process.
The CLI logs in once (its session file in a scratch ``XDG_CONFIG_HOME``) and runs once untimed,
which builds its API catalogue cache (``mgmt/cli/catalog.py``; later runs only read it). Then
``--runs`` (default 50) times, one after another: a new interpreter runs the command
(``--command``, default ``QueryZone``) through the ``ringstack`` console script of this
interpreter's environment (``python -m mgmt.cli.client`` with ``--module``), and the wall time
from ``fork`` to exit is recorded along with the child's user+system CPU time (``wait4``). The
reply must be exit code 0. Baselines measured the same way: ``python -c pass`` (the
interpreter's own start) and ``ringstack --list`` (no broker).

The output is JSON: p50/p95/max wall and CPU per command, and the machine's load average, since
on a shared 2-core machine the wall time is mostly waiting for a CPU (compare ``python -c pass``).
The goal is **p95 < 300 ms** wall for ``ringstack QueryZone``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as ``python bench/x.py``: make the repository importable, as -m does
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.nodes import ADMIN, Nodes, environment, machine, percentile


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    started = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # the child: exactly the command, no shell in between
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(devnull, 1)
        os.execve(argv[0], argv, env)
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - started
    return wall, usage.ru_utime + usage.ru_stime, os.waitstatus_to_exitcode(status)


def summary(walls: list[float], cpus: list[float]) -> dict[str, Any]:
    walls, cpus = sorted(walls), sorted(cpus)
    ms = lambda v: round(v * 1000, 1)  # noqa: E731
    return {
        "runs": len(walls),
        "wall_ms": {
            "p50": ms(percentile(walls, 0.5)),
            "p95": ms(percentile(walls, 0.95)),
            "max": ms(walls[-1]),
        },
        "cpu_ms": {"p50": ms(percentile(cpus, 0.5)), "p95": ms(percentile(cpus, 0.95)), "max": ms(cpus[-1])},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--command", default="QueryZone")
    parser.add_argument("--module", action="store_true", help="python -m mgmt.cli.client, not the script")
    parser.add_argument("--broker-url", default="amqp://guest:guest@127.0.0.1:5672/")
    args = parser.parse_args()

    script = shutil.which("ringstack", path=str(Path(sys.executable).parent))
    cli = [sys.executable, "-m", "mgmt.cli.client"] if args.module or not script else [script]
    with environment("clistart", args.broker_url) as (scratch, broker), tempfile.TemporaryDirectory() as home:
        nodes = Nodes(scratch, broker)
        try:
            nodes.start(1)
            env = {
                **nodes.env,
                "XDG_CONFIG_HOME": f"{home}/config",
                "XDG_CACHE_HOME": f"{home}/cache",
                "XDG_STATE_HOME": f"{home}/state",
            }
            name, password = ADMIN
            for warm in (["LogInByAccount", f"accountName={name}", f"password={password}"], [args.command]):
                _, _, code = timed([*cli, *warm], env)
                if code != 0:
                    raise SystemExit(f"{' '.join(warm)} exited {code}")
            results: dict[str, Any] = {}
            for label, argv in (
                ("python -c pass", [sys.executable, "-c", "pass"]),
                ("ringstack --list", [*cli, "--list"]),
                (f"ringstack {args.command}", [*cli, args.command]),
            ):
                walls, cpus = [], []
                for _ in range(args.runs):
                    wall, cpu, code = timed(argv, env)
                    if code != 0:
                        raise SystemExit(f"{label} exited {code}")
                    walls.append(wall)
                    cpus.append(cpu)
                results[label] = summary(walls, cpus)
        finally:
            nodes.close()
        print(
            json.dumps(
                {"cli": " ".join(cli), "results": results, "machine": machine(args.broker_url)}, indent=2
            )
        )


if __name__ == "__main__":
    main()
