"""Shared fixtures: real broker and database, isolated per test (see tests/support/infra.py)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import pytest

from tests.support import infra


@pytest.fixture(scope="session")
def template_database() -> Iterator[str]:
    """A database migrated to head once per run; each test clones it."""
    from mgmt.core.migrate import upgrade

    name = infra.unique("rs_tmpl_")
    url = infra.create_database(name)
    try:
        upgrade(url)
        yield name
    finally:
        infra.drop_database(name)


@pytest.fixture
def database_url(template_database: str) -> Iterator[str]:
    name = infra.unique("rs_t_")
    url = infra.create_database(name, template=template_database)
    try:
        yield url
    finally:
        infra.drop_database(name)


@pytest.fixture
def namespace() -> Iterator[str]:
    ns = infra.unique("t")
    try:
        yield ns
    finally:
        infra.delete_topology(ns)


@pytest.fixture
def broker_url() -> str:
    return infra.BROKER_URL


@pytest.fixture
def node_config(database_url: str, namespace: str, broker_url: str):
    from mgmt.config import NodeConfig

    return NodeConfig(
        broker_url=broker_url,
        database_url=database_url,
        namespace=namespace,
        drain_timeout=10,
        default_call_timeout=10,
    )


@pytest.fixture
async def node(node_config) -> AsyncIterator:
    """A management node running in the test's event loop."""
    from mgmt.node import ManagementNode

    n = ManagementNode(node_config)
    await n.start()
    try:
        yield n
    finally:
        await n.stop()


@pytest.fixture
async def client(namespace: str, broker_url: str) -> AsyncIterator:
    """An async bus client in the same namespace as ``node``, logged in as the bootstrap admin on
    first use: ``client.api(...)`` carries that session (see tests/support/identity.py for
    ``client.login(name, password)`` and ``client.as_session(...)``)."""
    from bus.topology import Topology
    from tests.support.identity import SessionBus

    bus = SessionBus(
        broker_url, Topology(namespace), process_name=f"test-client-{namespace}", default_timeout=10
    )
    await bus.start()
    try:
        yield bus
    finally:
        await bus.close()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Integration and system tests are marked by folder, so a new file cannot forget its mark.
    for item in items:
        path = str(item.fspath)
        if f"{os.sep}integration{os.sep}" in path:
            item.add_marker(pytest.mark.integration)
        if f"{os.sep}system{os.sep}" in path:
            item.add_marker(pytest.mark.system)


@pytest.fixture
async def simulator(namespace: str, broker_url: str) -> AsyncIterator:
    """A simulator serving hosts in the test's namespace, in the test's event loop (fast); tests
    that kill the agent use ``tests.support.simulator.SimulatorProcess`` instead."""
    from agents.simulator.simulator import Simulator
    from bus.aio import AsyncBus
    from bus.topology import Topology

    topology = Topology(namespace)
    bus = AsyncBus(
        broker_url, topology, process_name=f"test-simulator-{namespace}", reply_exchange=topology.replies_exchange.name
    )
    sim = Simulator(bus)
    await sim.start()
    try:
        yield sim
    finally:
        await bus.close()


@pytest.fixture
def private_broker() -> Iterator:
    """A RabbitMQ node of the test's own (tests/support/broker.py): for tests that stop, restart or
    cut the broker, which the shared one must never be."""
    from tests.support.broker import PrivateBroker

    with PrivateBroker() as broker:
        yield broker
