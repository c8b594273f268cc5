"""``python -m agents.simulator``: run a simulator until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from bus.aio import AsyncBus
from bus.topology import Topology


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m agents.simulator", description=__doc__)
    parser.add_argument(
        "--broker-url", default=os.environ.get("RINGSTACK_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/")
    )
    parser.add_argument("--namespace", default=os.environ.get("RINGSTACK_NAMESPACE", "ringstack"))
    parser.add_argument("--name", default="simulator", help="control queue is <namespace>.<name>")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser.parse_args(argv)


async def run(args: argparse.Namespace) -> None:
    from agents.simulator.simulator import Simulator

    topology = Topology(args.namespace)
    bus = AsyncBus(
        args.broker_url,
        topology,
        process_name=f"ringstack-{args.name}",
        reply_exchange=topology.replies_exchange.name,
    )
    simulator = Simulator(bus, args.name)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await simulator.start()
    print(f"simulator {args.name} ready", flush=True)
    await stop.wait()
    await bus.close()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
