"""``ringstack-vrouter-agent``: serve one virtual router's agent queue until SIGTERM/SIGINT.

Configuration: ``--config FILE`` (or ``$RINGSTACK_VROUTER_AGENT_CONFIG``, or
``/etc/ringstack/vrouter-agent.toml``) and ``RINGSTACK_<KEY>`` variables; see
``agents.vrouter.config``. Exit codes: 0 after a signal, 2 for a bad configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from bus.errors import RingstackError


async def run(config_path: str | None) -> int:
    from agents.common.server import AgentServer
    from agents.kvm.bus import AgentBus
    from agents.vrouter.agent import VrouterAgent
    from agents.vrouter.config import load_config
    from bus.topology import Topology

    config = load_config(config_path)
    logging.getLogger().setLevel(config.log_level)
    log = logging.getLogger("ringstack-vrouter-agent")
    bus = AgentBus(
        config.broker_url,
        Topology(config.namespace),
        config.host_uuid,
        process_name=f"ringstack-vrouter-agent-{config.host_uuid}",
    )
    server = AgentServer(bus, prefetch=config.prefetch)
    agent = VrouterAgent(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await agent.start()
    # The broker may not be reachable yet (the VR is booting): keep trying until it is.
    while not stop.is_set():
        try:
            await bus.start(timeout=30)
            break
        except RingstackError as exc:
            log.warning("%s; still trying", exc.message)
    if not stop.is_set():
        await server.serve(agent)
        print(f"ringstack-vrouter-agent for VR {config.host_uuid} ready", flush=True)
        await stop.wait()
    log.info("stopping")
    await server.stop_serving(config.host_uuid)
    await bus.close()
    await agent.close()
    return 0


def main(argv: list[str] | None = None) -> None:
    from agents.vrouter.config import ConfigError

    parser = argparse.ArgumentParser(prog="ringstack-vrouter-agent", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="TOML config file")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    try:
        code = asyncio.run(run(args.config))
    except ConfigError as exc:
        print(f"ringstack-vrouter-agent: {exc}", file=sys.stderr)
        code = 2
    sys.exit(code)


if __name__ == "__main__":
    main()
