"""Routed calls between two in-process nodes: owner look-up, local short-cut, NOT_OWNER, fencing."""

from __future__ import annotations

import uuid as uuidlib

import pytest

from bus.errors import RingstackError, Sys
from mgmt.node import ManagementNode
from tests.support.cluster import until
from tests.support.services import AUDIT_DDL


@pytest.fixture
async def two_nodes(node_config):
    config = node_config.model_copy(
        update={
            "heartbeat_interval": 0.3,
            "lease_ttl": 1.2,
            "extra_services": ["tests.support.services:AuditService"],
        }
    )
    first = ManagementNode(config)
    from sqlalchemy import text

    with first.db.engine.begin() as conn:
        conn.execute(text(AUDIT_DDL))
    await first.start()
    second = ManagementNode(config.model_copy(update={"node_uuid": uuidlib.uuid4().hex}))
    await second.start()

    async def agreed():
        a, b = first.cluster, second.cluster
        return (
            a.ring.epoch == b.ring.epoch
            and len(a.ring.members) == 2
            and len(a.ownership.held) + len(b.ownership.held) == a.ring.partitions
        )

    await until(agreed, 20, "two nodes to share the partitions")
    try:
        yield first, second
    finally:
        await second.stop()
        await first.stop()


def _owned_by(node, count=1):
    keys = []
    while len(keys) < count:
        key = uuidlib.uuid4().hex
        if node.cluster.ring.owner(key) == node.uuid:
            keys.append(key)
    return keys


async def test_routed_call_runs_on_the_owner_or_locally(two_nodes):
    first, second = two_nodes
    (theirs,) = _owned_by(second)
    (mine,) = _owned_by(first)
    remote = await first.cluster.owners.call("AuditedWork", {"uuid": theirs, "seconds": 0}, resource_uuid=theirs)
    local = await first.cluster.owners.call("AuditedWork", {"uuid": mine, "seconds": 0}, resource_uuid=mine)
    assert remote["nodeUuid"] == second.uuid
    assert local["nodeUuid"] == first.uuid


async def test_a_node_refuses_a_call_for_a_resource_it_does_not_own(two_nodes, client):
    first, second = two_nodes
    (theirs,) = _owned_by(second)
    with pytest.raises(RingstackError) as err:
        await client.call(
            first.topology.node_queue(first.uuid).name,
            "AuditedWork",
            {"uuid": theirs, "seconds": 0},
            resource_uuid=theirs,
        )
    assert err.value.code == Sys.NOT_OWNER


async def test_api_requests_land_on_the_owner_whichever_node_takes_them(two_nodes, client):
    first, second = two_nodes
    keys = _owned_by(first, 5) + _owned_by(second, 5)
    for key in keys:
        reply = await client.api("AuditedWork", {"uuid": key, "seconds": 0})
        assert reply["nodeUuid"] == first.cluster.ring.owner(key)


async def test_status_command_lists_both_nodes(two_nodes, node_config):
    import asyncio

    from mgmt.cli.status import cluster_status

    first, second = two_nodes

    async def consistent():
        status = await asyncio.to_thread(cluster_status, node_config)
        by_uuid = {n.uuid: n.model_dump() for n in status.nodes}
        assert set(by_uuid) == {first.uuid, second.uuid}
        for node in (first, second):
            entry = by_uuid[node.uuid]
            assert entry["state"] == "alive" and entry["heartbeatAge"] < 5
            # what the database records and what the node reports agree (once nothing is moving)
            if entry.get("members") != 2 or entry["epoch"] != node.cluster.ring.epoch:
                return None
            if entry["partitions"] != len(node.cluster.ownership.held):
                return None
        return by_uuid

    by_uuid = await until(consistent, 20, "status to agree with the nodes")
    assert sum(n["partitions"] for n in by_uuid.values()) == first.cluster.ring.partitions
    status = await asyncio.to_thread(cluster_status, node_config)
    assert status.healthy, status.problems
    assert all(n.ready and n.opsAddress for n in status.nodes)
