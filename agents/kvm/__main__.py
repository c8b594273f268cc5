"""``ringstack-kvm-agent``: serve one KVM host's agent queue until SIGTERM/SIGINT.

Configuration: ``--config FILE`` (or ``$RINGSTACK_KVM_AGENT_CONFIG``, or
``/etc/ringstack/kvm-agent.toml``) and ``RINGSTACK_<KEY>`` variables; see ``agents.kvm.config``.
``--pid-file`` is written once libvirt answers (the Ansible role waits for it) and removed at exit;
a second agent on the same pid file refuses to start. Exit codes: 0 after a signal, 2 for a bad
configuration, 1 when libvirt cannot be reached or another agent runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path

from bus.errors import RingstackError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ringstack-kvm-agent", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="TOML config file")
    parser.add_argument("--pid-file", help="write the pid here once running")
    return parser.parse_args(argv)


def claim_pid_file(path: Path) -> None:
    """Write our pid; refuse when the file names another live process."""
    with contextlib.suppress(FileNotFoundError, ValueError):
        other = int(path.read_text().strip())
        if other != os.getpid():
            with contextlib.suppress(ProcessLookupError):
                os.kill(other, 0)
                raise SystemExit(f"ringstack-kvm-agent: already running as pid {other} ({path})")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{os.getpid()}\n")
    tmp.replace(path)


def release_pid_file(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError, ValueError):
        if int(path.read_text().strip()) == os.getpid():
            path.unlink()


async def run(config_path: str | None, pid_file: Path | None) -> int:
    from agents.common.server import AgentServer
    from agents.kvm.agent import KvmAgent
    from agents.kvm.bus import AgentBus
    from agents.kvm.config import load_config
    from bus.topology import Topology
    from schema.agent import REPORT_VM_STATE, VmStateReport

    config = load_config(config_path)
    logging.getLogger().setLevel(config.log_level)
    log = logging.getLogger("ringstack-kvm-agent")
    topology = Topology(config.namespace)
    bus = AgentBus(config.broker_url, topology, config.host_uuid)
    server = AgentServer(bus, prefetch=config.prefetch)

    async def report(body: VmStateReport) -> None:
        await server.report(config.host_uuid, REPORT_VM_STATE, body)

    agent = KvmAgent(config, reporter=report)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await agent.start()
    except RingstackError as exc:
        log.error("cannot start: %s", exc.message)
        return 1
    if pid_file is not None:
        claim_pid_file(pid_file)
    try:
        # The broker may be down or not yet reachable: keep trying (the bus backs off) until it is.
        while not stop.is_set():
            try:
                await bus.start(timeout=30)
                break
            except RingstackError as exc:
                log.warning("%s; still trying", exc.message)
        if not stop.is_set():
            await server.serve(agent)
            print(
                f"ringstack-kvm-agent for host {config.host_uuid} ready on {config.libvirt_uri}", flush=True
            )
            await stop.wait()
        log.info("stopping")
        await server.stop_serving(config.host_uuid)
        await bus.close()
        await agent.close()
    finally:
        if pid_file is not None:
            release_pid_file(pid_file)
    return 0


def main(argv: list[str] | None = None) -> None:
    from agents.kvm.config import ConfigError

    args = parse_args(argv)
    logging.basicConfig(
        level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    try:
        code = asyncio.run(run(args.config, Path(args.pid_file) if args.pid_file else None))
    except ConfigError as exc:
        print(f"ringstack-kvm-agent: {exc}", file=sys.stderr)
        code = 2
    sys.exit(code)


if __name__ == "__main__":
    main()
