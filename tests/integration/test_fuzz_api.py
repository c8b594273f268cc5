"""Hostile messages against real processes on the real broker: a node's API queue and its own queue,
the simulator's and the KVM agent's host queues (``tests/support/fuzz.py`` says what is generated
and checked per message). After the barrage: nothing is left unacknowledged, the process logged
no traceback and at most one line per message, and a valid call is answered normally.

Bounded for CI (a few hundred messages per queue); ``bench/fuzz.py`` runs 10,000.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid as uuidlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bus.sync import SyncClient
from bus.topology import Topology
from mgmt.cluster.jobs import CANCEL_RUNNING_JOB, RUN_JOB
from mgmt.cluster.runtime import NODE_STATUS
from schema.agent import HypervisorAgent
from schema.agent_base import commands_of
from schema.registry import load_all
from tests.integration.test_kvm_agent_process import AgentProcess, write_config
from tests.support import fuzz, infra
from tests.support.identity import ADMIN_NAME, ADMIN_PASSWORD
from tests.support.procs import NodeProcess, node_env
from tests.support.simulator import SimulatorProcess, control
from tests.system.kvmsupport import delete_agent_queues, libvirt_test_uri

BATCHES = settings(
    max_examples=40,
    deadline=None,
    database=None,
    derandomize=False,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
BATCH = 10
# The agents' commands that touch nothing outside the process (the KVM agent's others would run
# ip/virsh on this machine): the fuzzer sends every other command with a host uuid not the agent's.
KVM_SAFE = frozenset({"agent.ping", "agent.vm.sync", "agent.vm.console"})


def _unacked(namespace: str) -> dict[str, int]:
    out = infra.rabbitmqctl("list_queues", "name", "messages_unacknowledged", "--no-table-headers", "--quiet")
    counts = {}
    for line in out.splitlines():
        name, _, count = line.partition("\t")
        if name.startswith(f"{namespace}.") and count.strip().isdigit():
            counts[name] = int(count)
    return counts


def _assert_settled(namespace: str, queue: str) -> None:
    """Every delivery of the queue settled: no unacknowledged message left (the broker's counters
    lag a little behind the acks, so they are read until they agree or 10 s pass)."""
    deadline = time.monotonic() + 10
    while (left := _unacked(namespace).get(queue, 0)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert left == 0, f"{queue} has {left} unacknowledged messages"


def _assert_quiet_log(lines: list[str], start: int, messages: int) -> None:
    during = lines[start:]
    assert not [line for line in during if "Traceback" in line], "\n".join(during[-50:])
    assert len(during) <= messages, f"{len(during)} log lines for {messages} messages:\n" + "\n".join(
        during[-30:]
    )


@pytest.fixture
def node_proc(database_url, namespace, broker_url) -> Iterator[NodeProcess]:
    proc = NodeProcess(node_env(database_url, namespace, broker_url), "fuzzed-node")
    try:
        yield proc.wait_ready()
    finally:
        proc.close()


@pytest.fixture
def fuzzer(broker_url, namespace) -> Iterator[fuzz.Fuzzer]:
    f = fuzz.Fuzzer(broker_url, Topology(namespace), timeout=20)
    yield f
    f.close()


def _admin_session(broker_url: str, namespace: str) -> str:
    with SyncClient(broker_url, Topology(namespace), process_name=f"fuzz-login-{namespace}") as sync:
        return str(
            sync.api("LogInByAccount", {"accountName": ADMIN_NAME, "password": ADMIN_PASSWORD})["inventory"][
                "uuid"
            ]
        )


def test_api_queue_survives_hostile_messages(node_proc, fuzzer, broker_url, namespace):
    topology = Topology(namespace)
    target = fuzz.api_target(topology, [_admin_session(broker_url, namespace)])
    start = len(node_proc.lines)

    @BATCHES
    @given(st.lists(fuzz.drafts(target), min_size=BATCH, max_size=BATCH))
    def barrage(batch):
        fuzzer.fire(target, batch)

    barrage()
    fuzzer.settle()
    figures = fuzzer.figures.summary()
    assert figures["answered_pct"] == 100.0, figures
    assert figures["messages"] >= 40 * BATCH
    _assert_settled(namespace, topology.api_queue.name)
    _assert_quiet_log(node_proc.lines, start, figures["messages"])
    # A valid call right after is answered normally.
    assert _admin_session(broker_url, namespace)
    assert node_proc.proc.poll() is None


def test_node_queue_survives_hostile_messages(node_proc, fuzzer, namespace):
    node_uuid = re.search(r"node ([0-9a-f]{32}) ready", node_proc.wait_for_line(" ready: ")).group(1)
    queue = Topology(namespace).node_queue(node_uuid).name
    registry = load_all()
    models = {name: registry.get(name) for name in registry._messages}
    target = fuzz.models_target(queue, "call", models)
    internal = {
        RUN_JOB: {"job": fuzz.UUID, "partition": fuzz.HOSTILE_INT},
        CANCEL_RUNNING_JOB: {"job": fuzz.UUID},
        NODE_STATUS: {},
    }
    bodies = dict(target.bodies)
    for name, fields in internal.items():
        bodies[name] = st.fixed_dictionaries({}, optional=fields)
    target = fuzz.Target(queue, "call", bodies, (), fuzz.REACHING_OUT)
    start = len(node_proc.lines)

    @BATCHES
    @given(st.lists(fuzz.drafts(target), min_size=BATCH, max_size=BATCH))
    def barrage(batch):
        fuzzer.fire(target, batch)

    barrage()
    fuzzer.settle()
    figures = fuzzer.figures.summary()
    assert figures["answered_pct"] == 100.0, figures
    _assert_settled(namespace, queue)
    _assert_quiet_log(node_proc.lines, start, figures["messages"])
    assert node_proc.proc.poll() is None


async def _add_simulated_host(broker_url: str, namespace: str, name: str, host: str) -> None:
    from bus.aio import AsyncBus

    bus = AsyncBus(broker_url, Topology(namespace), process_name=f"fuzz-ctl-{namespace}")
    await bus.start()
    try:
        await control(bus, "add_hosts", {"hosts": [{"uuid": host}]}, simulator=name)
    finally:
        await bus.close()


def _agent_target(topology: Topology, host: str, safe: frozenset[str] | None) -> fuzz.Target:
    models = {name: spec.request for name, spec in commands_of(HypervisorAgent).items()}
    fixed = {"hostUuid": host, "protocolVersion": HypervisorAgent.VERSION}
    target = fuzz.models_target(topology.agent_queue(host).name, "call", models, fixed=fixed)
    if safe is None:
        return target
    # Commands not known to be harmless always name another host: refused before they run.
    other = {"hostUuid": uuidlib.uuid4().hex}
    bodies = {
        name: body if name in safe else body.map(lambda b: {**b, **other} if isinstance(b, dict) else b)
        for name, body in target.bodies.items()
    }
    return fuzz.Target(target.queue, "call", bodies)


def _fuzz_agent(fuzzer: fuzz.Fuzzer, target: fuzz.Target, lines: list[str], namespace: str) -> None:
    start = len(lines)

    @BATCHES
    @given(st.lists(fuzz.drafts(target), min_size=BATCH, max_size=BATCH))
    def barrage(batch):
        fuzzer.fire(target, batch)

    barrage()
    fuzzer.settle()
    figures = fuzzer.figures.summary()
    assert figures["answered_pct"] == 100.0, figures
    _assert_settled(namespace, target.queue)
    _assert_quiet_log(lines, start, figures["messages"])


def test_simulator_agent_queue_survives_hostile_messages(fuzzer, broker_url, namespace):
    host = uuidlib.uuid4().hex
    sim = SimulatorProcess(broker_url, namespace, name=f"sim{host[:8]}").wait_ready()
    try:
        asyncio.run(_add_simulated_host(broker_url, namespace, sim.name, host))
        topology = Topology(namespace)
        _fuzz_agent(fuzzer, _agent_target(topology, host, None), sim.lines, namespace)
        with SyncClient(broker_url, topology) as sync:
            assert (
                sync.call(
                    topology.agent_queue(host).name,
                    "agent.ping",
                    {"hostUuid": host, "protocolVersion": HypervisorAgent.VERSION},
                )["hostUuid"]
                == host
            )
        assert sim.proc.poll() is None
    finally:
        sim.close()
        delete_agent_queues(namespace, host)


def test_kvm_agent_queue_survives_hostile_messages(fuzzer, broker_url, namespace, tmp_path: Path):
    host = uuidlib.uuid4().hex
    config = write_config(
        tmp_path / "kvm-agent.toml",
        host_uuid=host,
        broker_url=broker_url,
        namespace=namespace,
        libvirt_uri=libvirt_test_uri(tmp_path),
        domain_type="qemu",
    )
    agent = AgentProcess(config, tmp_path / "agent.pid")
    try:
        agent.wait_ready()
        topology = Topology(namespace)
        _fuzz_agent(fuzzer, _agent_target(topology, host, KVM_SAFE), agent.lines, namespace)
        with SyncClient(broker_url, topology) as sync:
            assert (
                sync.call(
                    topology.agent_queue(host).name,
                    "agent.ping",
                    {"hostUuid": host, "protocolVersion": HypervisorAgent.VERSION},
                )["hostUuid"]
                == host
            )
        assert agent.proc.poll() is None
    finally:
        agent.close()
        delete_agent_queues(namespace, host)


def test_ids_beyond_a_short_string_do_not_stop_the_api_consumer(node_proc, fuzzer, broker_url, namespace):
    """Issue 10's 128-message wedge: more envelopes whose id cannot be an AMQP short string than the
    node's API prefetch (128); each is settled, and the node goes on answering."""
    target = fuzz.api_target(Topology(namespace))
    wedge = {"id": "i" * 256, "name": "NoSuchApi", "kind": "api", "body": {}, "reply_to": "x"}
    fuzzer.fire(target, [fuzz.Draft(wedge, None, {}, asks=False)] * 200)
    asked = {**wedge, "reply_to": fuzz.OURS}
    fuzzer.fire(target, [fuzz.Draft(asked, None, {}, asks=True)])
    assert fuzzer.figures.codes == {"SYS.MALFORMED_MESSAGE": 1}
    assert _admin_session(broker_url, namespace)
    _assert_settled(namespace, Topology(namespace).api_queue.name)


def test_a_mutating_call_addressed_only_by_the_reply_to_property_is_answered(
    node_proc, fuzzer, broker_url, namespace
):
    """One rule for reply addresses (bus/envelope.py): a job is answered like a read."""
    session = _admin_session(broker_url, namespace)
    target = fuzz.api_target(Topology(namespace), [session])
    create = {
        "id": fuzz.TOKEN,
        "name": "CreateZone",
        "kind": "api",
        "body": {"name": "z"},
        "session": session,
    }
    fuzzer.fire(target, [fuzz.Draft(create, None, {}, asks=True)])
    assert fuzzer.figures.codes == {"OK": 1}
