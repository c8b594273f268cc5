"""A hostile publisher floods a real node's API queue: thousands of fuzzed messages (tests/support/fuzz.py:
envelopes, every API's body, raw bodies, AMQP properties that are not UTF-8 or cannot be decoded
at all) published in bursts far larger than the node's prefetch window, so the node works through
a backlog. Afterwards: every message that asked for a reply got exactly one structured reply,
nothing is left unacknowledged, the node's connection never dropped, and a valid LogInByAccount is
answered normally. (A reply may come after the request's deadline when the request waited behind
a burst: the figures say how many; ``test_fuzz_api.py`` checks deadlines on bursts of ten.)

``RINGSTACK_FUZZ_FLOOD`` sets the number of messages (default 2,000; ``bench/fuzz.py`` runs 10,000
and reports the figures).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from bus.sync import SyncClient
from bus.topology import Topology
from tests.integration.test_fuzz_api import _assert_quiet_log, _assert_settled
from tests.support import fuzz
from tests.support.identity import ADMIN_NAME, ADMIN_PASSWORD
from tests.support.procs import NodeProcess, node_env

FLOOD = int(os.environ.get("RINGSTACK_FUZZ_FLOOD", "2000"))
BURST = 250  # about twice the node's API prefetch window (128)
DRAW = 25  # drafts per hypothesis example (a larger draw overruns hypothesis's buffer)


@pytest.fixture
def node_proc(database_url, namespace, broker_url) -> Iterator[NodeProcess]:
    proc = NodeProcess(node_env(database_url, namespace, broker_url), "flooded-node")
    try:
        yield proc.wait_ready()
    finally:
        proc.close()


def _log_in(broker_url: str, namespace: str) -> str:
    with SyncClient(broker_url, Topology(namespace), process_name=f"flood-login-{namespace}") as sync:
        reply = sync.api(
            "LogInByAccount", {"accountName": ADMIN_NAME, "password": ADMIN_PASSWORD}, timeout=30
        )
        return str(reply["inventory"]["uuid"])


def test_a_flood_of_hostile_messages_leaves_the_node_answering(node_proc, broker_url, namespace, capsys):
    topology = Topology(namespace)
    target = fuzz.api_target(topology, [_log_in(broker_url, namespace)])
    # Deadlines cover the whole backlog of a burst on a loaded machine.
    fuzzer = fuzz.Fuzzer(broker_url, topology, timeout=120)
    start = len(node_proc.lines)
    started = time.monotonic()

    pending: list[fuzz.Draft] = []

    @settings(
        max_examples=max(1, FLOOD // DRAW),
        phases=[Phase.generate],
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.lists(fuzz.drafts(target), min_size=DRAW, max_size=DRAW))
    def flood(drawn: list[fuzz.Draft]) -> None:
        pending.extend(drawn)
        if len(pending) >= BURST:
            fuzzer.fire(target, pending, check=False)
            pending.clear()

    try:
        flood()
        fuzzer.fire(target, pending, check=False)
        # Checked below from the figures: replies to requests whose deadline had passed when they
        # were sent come "late" when they wait behind a burst, which is no fault of the node's.
        fuzzer.figures.failures.clear()
        fuzzer.settle()
        elapsed = time.monotonic() - started
        figures = fuzzer.figures.summary()
    finally:
        fuzzer.close()
    assert figures["messages"] >= FLOOD * 0.9  # (hypothesis may skip a few draws)
    assert figures["answered_pct"] == 100.0, figures
    assert figures["internal_errors"] == figures["unstructured_replies"] == figures["duplicates"] == 0, (
        figures
    )
    _assert_settled(namespace, topology.api_queue.name)
    _assert_quiet_log(node_proc.lines, start, figures["messages"])
    assert not [line for line in node_proc.lines[start:] if "connection lost" in line]
    t0 = time.monotonic()
    assert _log_in(broker_url, namespace)
    after = time.monotonic() - t0
    assert node_proc.proc.poll() is None
    with capsys.disabled():
        print(
            f"\nflood: {figures['messages']} messages in {elapsed:.1f} s "
            f"({figures['messages'] / elapsed:.0f}/s), answered {figures['answered_pct']} %, "
            f"latency p50/max {figures['latency_p50_s']}/{figures['latency_max_s']} s "
            f"(late {figures['late_replies']}), valid call after {after:.2f} s"
        )
