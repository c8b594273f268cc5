"""The one owner path (mgmt/cluster/owner.py): jobs and calls about a resource share its serial
lane, and a handler's ``serial=`` flag is honoured on both."""

from __future__ import annotations

import asyncio

import pytest

from bus.envelope import new_uuid
from mgmt.node import ManagementNode


@pytest.fixture
async def lane_node(node_config):
    config = node_config.model_copy(update={"extra_services": ["tests.support.services:LaneProbeService"]})
    node = ManagementNode(config)
    await node.start()
    try:
        yield node
    finally:
        await node.stop()


async def test_a_serial_handler_is_serialized_on_the_job_path_and_with_calls(lane_node, client):
    uuid = new_uuid()
    body = {"uuid": uuid, "hold": 0.4}
    replies = await asyncio.gather(
        client.api("LaneProbe", body),  # API requests: durable jobs
        client.api("LaneProbe", body),
        lane_node.cluster.owners.call("LaneProbe", body, resource_uuid=uuid),  # a call between services
    )
    assert [r["peak"] for r in replies] == [1, 1, 1]


async def test_a_handler_declared_serial_false_is_not_serialized_on_the_job_path(lane_node, client):
    # The counterpart that shows the probe can see an overlap: the flag is what serializes.
    uuid = new_uuid()
    body = {"uuid": uuid, "hold": 5}
    replies = await asyncio.gather(
        client.api("UnorderedLaneProbe", body), client.api("UnorderedLaneProbe", body)
    )
    assert sorted(r["peak"] for r in replies) == [2, 2]
