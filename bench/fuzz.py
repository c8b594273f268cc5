"""The hostile-message barrage of issue 10 at full size: 10,000 fuzzed messages onto a real node's API
queue, then a valid call; prints one JSON object of figures.

It runs the same generator and checks as ``tests/integration/test_fuzz_api.py``
(``tests/support/fuzz.py``: fuzzed envelopes, every API's body from ``schema.registry``, raw bodies,
AMQP properties with bytes that are not UTF-8), without stopping at the first problem: every
problem is counted. One node process, on its own database and broker namespace (``bench.nodes``),
removed at the end.

Figures: ``messages``; ``answered_pct`` (of the messages that asked for a reply); latencies of the
replies (``latency_max_s``...); ``internal_errors`` (replies ``SYS.INTERNAL``: must be 0);
``log_lines`` (lines the node logged during the barrage) and ``log_lines_per_rejected`` (divided by
the messages not answered OK; at most 1 is the goal); ``tracebacks``; ``unacked_after`` (the API
queue's unacknowledged messages after the barrage); ``valid_call_after_s`` (LogInByAccount right
after the barrage, answered normally).

    .venv/bin/python -m bench.fuzz                       # 10,000 messages
    .venv/bin/python -m bench.fuzz --messages 2000 --batch 50
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

if __package__ in (None, ""):  # run as ``python bench/x.py``: make the repository importable, as -m does
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.nodes import ADMIN, DEFAULT_BROKER_URL, Nodes, environment, machine, progress, rabbitmqctl
from bus.sync import SyncClient
from tests.support import fuzz


def _unacked(queue: str) -> int:
    out = rabbitmqctl("list_queues", "name", "messages_unacknowledged", "--no-table-headers", "--quiet")
    for line in out.splitlines():
        name, _, count = line.partition("\t")
        if name == queue:
            return int(count.strip() or 0)
    return 0


def run(broker_url: str, messages: int, batch: int) -> dict[str, Any]:
    with environment("fuzz", broker_url) as (scratch, broker):
        nodes = Nodes(scratch, broker)
        try:
            (node,) = nodes.start(1)
            with SyncClient(broker.url, broker.topology, process_name=f"{broker.namespace}-login") as sync:
                session = sync.api("LogInByAccount", {"accountName": ADMIN[0], "password": ADMIN[1]})
            target = fuzz.api_target(broker.topology, [session["inventory"]["uuid"]])
            fuzzer = fuzz.Fuzzer(broker.url, broker.topology, timeout=20)
            start_line = len(node.lines)
            started = time.monotonic()

            @settings(
                max_examples=max(1, messages // batch),
                phases=[Phase.generate],
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(st.lists(fuzz.drafts(target), min_size=batch, max_size=batch))
            def barrage(drafts: list[fuzz.Draft]) -> None:
                fuzzer.fire(target, drafts, check=False)
                if fuzzer.figures.messages % 1000 < batch:
                    progress(f"{fuzzer.figures.messages} messages sent")

            barrage()
            fuzzer.figures.failures.clear()  # counted already; the figures say what went wrong
            fuzzer.settle(2.0)
            elapsed = time.monotonic() - started
            figures = fuzzer.figures.summary()
            fuzzer.close()
            during = [ln.text for ln in node.lines[start_line:]]
            ok = figures["reply_codes"].get("OK", 0)
            rejected = max(1, figures["messages"] - ok)
            t0 = time.monotonic()
            with SyncClient(broker.url, broker.topology, process_name=f"{broker.namespace}-after") as sync:
                after = sync.api(
                    "LogInByAccount", {"accountName": ADMIN[0], "password": ADMIN[1]}, timeout=30
                )
            valid_after = time.monotonic() - t0
            assert after["inventory"]["uuid"]
            return {
                **figures,
                "seconds": round(elapsed, 1),
                "messages_per_s": round(figures["messages"] / elapsed, 1),
                "log_lines": len(during),
                "log_lines_per_rejected": round(len(during) / rejected, 3),
                "tracebacks": sum("Traceback" in line for line in during),
                "unacked_after": _unacked(broker.topology.api_queue.name),
                "valid_call_after_s": round(valid_after, 3),
                "node_alive": node.alive,
            }
        finally:
            nodes.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--broker-url", default=DEFAULT_BROKER_URL)
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=50)
    args = parser.parse_args()
    result = {
        "benchmark": "fuzz",
        "machine": machine(args.broker_url),
        **run(args.broker_url, args.messages, args.batch),
    }
    json.dump(result, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
