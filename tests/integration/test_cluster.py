"""The management cluster with real node processes: ring agreement, joins, SIGKILL under load,
clean hand-over, and a node cut off from the broker."""

from __future__ import annotations

import asyncio
import itertools
import signal
import time
import uuid as uuidlib
from collections import defaultdict

import pytest

from bus.errors import RingstackError, Sys
from bus.ring import Ring
from tests.support import infra
from tests.support.cluster import ClusterOfProcesses, node_status, until
from tests.support.services import AUDIT_DDL

PARTITIONS = 256


@pytest.fixture
def cluster(database_url, namespace, broker_url):
    c = ClusterOfProcesses(database_url, namespace, broker_url)
    c.sql(AUDIT_DDL)
    try:
        yield c
    finally:
        c.close()


async def converged(client, cluster, expected: set[str]) -> dict[str, dict]:
    """Every expected node reports the same epoch with exactly the expected members, and the
    partitions are held by the members only, each by one."""

    async def check():
        owners = dict(cluster.sql("SELECT partition, owner_node_uuid FROM ring_partition"))
        statuses = {u: await node_status(client, u) for u in expected}
        epochs = {s["epoch"] for s in statuses.values()}
        if len(epochs) != 1 or any(set(s["members"]) != expected for s in statuses.values()):
            return None
        ring = Ring.build(epochs.pop(), expected)
        if any(owners[p] != ring.owner_of_partition(p) for p in range(PARTITIONS)):
            return None
        # each node knows exactly what the database says it holds
        if any(s["partitionsHeld"] != len(ring.partitions_of(u)) for u, s in statuses.items()):
            return None
        return statuses

    return await until(check, 30, f"the ring to converge on {len(expected)} nodes")


async def test_three_nodes_agree_then_a_fourth_joins(cluster, client):
    first = set(cluster.start(3))
    statuses = await converged(client, cluster, first)
    assert sum(s["partitionsHeld"] for s in statuses.values()) == PARTITIONS
    epoch_before = next(iter(statuses.values()))["epoch"]

    keys = [uuidlib.uuid4().hex for _ in range(20_000)]
    before = Ring.build(epoch_before, first)
    (fourth,) = cluster.start(1)
    statuses = await converged(client, cluster, first | {fourth})
    after = Ring.build(next(iter(statuses.values()))["epoch"], first | {fourth})
    moved = sum(before.owner(k) != after.owner(k) for k in keys) / len(keys)
    assert 0.15 < moved < 0.35, moved  # close to the ideal quarter
    assert all(after.owner(k) == fourth for k in keys if before.owner(k) != after.owner(k))

    # QueryManagementNode over the API shows the four alive
    nodes = await client.api(
        "QueryManagementNode", {"conditions": [{"name": "state", "op": "=", "value": "alive"}]}
    )
    assert {n["uuid"] for n in nodes["inventories"]} == first | {fourth}


async def _work(client, resource: str, seconds: float) -> dict:
    return await client.api("AuditedWork", {"uuid": resource, "seconds": seconds}, timeout=90)


def _audit(cluster):
    return cluster.sql(
        "SELECT job_uuid, resource_uuid, node_uuid, started_at, ended_at FROM test_audit ORDER BY started_at"
    )


def _assert_no_overlap(rows, killed: str | None, killed_at) -> None:
    by_resource = defaultdict(list)
    for job, resource, node, started, ended in rows:
        if ended is None:
            assert node == killed, f"an operation on {node} never ended"
        by_resource[resource].append((started, ended or killed_at, node, job))
    for resource, spans in by_resource.items():
        spans.sort()
        for (_, e1, n1, j1), (s2, _, n2, j2) in itertools.pairwise(spans):
            assert s2 >= e1, f"{resource}: {j2} on {n2} started before {j1} on {n1} ended"


async def test_sigkill_under_load_loses_nothing_and_never_overlaps(cluster, client):
    nodes = cluster.start(3)
    await converged(client, cluster, set(nodes))
    resources = [uuidlib.uuid4().hex for _ in range(50)]
    calls = [asyncio.create_task(_work(client, resources[i % 50], 0.3)) for i in range(200)]

    # Kill the node with the most operations running right now, once the load is well under way.
    async def busy_victim():
        rows = cluster.sql(
            "SELECT node_uuid, count(*) FROM test_audit WHERE ended_at IS NULL GROUP BY node_uuid"
        )
        done = cluster.sql("SELECT count(*) FROM test_audit WHERE ended_at IS NOT NULL")[0][0]
        busiest = max(rows, key=lambda r: r[1]) if rows else None
        if done >= 20 and busiest is not None and busiest[1] >= 3:
            return busiest[0]
        return None

    victim = await until(busy_victim, 60, "operations to be running")
    cluster.nodes[victim].kill()
    killed_at = cluster.sql("SELECT clock_timestamp()")[0][0]

    results = await asyncio.gather(*calls, return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors[:3]
    assert len(results) == 200

    rows = _audit(cluster)
    completed = defaultdict(int)
    for job, _, _, _, ended in rows:
        if ended is not None:
            completed[job] += 1
    assert len(completed) == 200 and set(completed.values()) == {1}  # each ran to completion exactly once
    # a job ran more than once only when its first run was cut off by the kill
    attempts = dict(cluster.sql("SELECT uuid, attempts FROM job"))
    starts = defaultdict(list)
    for job, _, node, _, _ in rows:
        starts[job].append(node)
    for job, nodes_that_started in starts.items():
        assert len(nodes_that_started) <= attempts[job]
        if len(nodes_that_started) > 1:
            assert nodes_that_started[0] == victim and victim not in nodes_that_started[1:]
    _assert_no_overlap(rows, victim, killed_at)
    states = dict(cluster.sql("SELECT state, count(*) FROM job GROUP BY state"))
    assert states == {"succeeded": 200}
    interrupted = [r for r in rows if r[4] is None]
    resumed = cluster.sql("SELECT count(*) FROM job WHERE attempts > 1")[0][0]
    assert resumed >= len(interrupted) > 0  # the victim really was cut off mid-work, and it was resumed


async def test_clean_stop_hands_over_without_errors(cluster, client):
    nodes = cluster.start(3)
    await converged(client, cluster, set(nodes))
    resources = [uuidlib.uuid4().hex for _ in range(30)]
    calls = [asyncio.create_task(_work(client, resources[i % 30], 0.05)) for i in range(120)]
    await until(
        lambda: asyncio.to_thread(lambda: cluster.sql("SELECT count(*) FROM test_audit")[0][0] >= 10),
        30,
        "load",
    )
    leaving = nodes[0]
    cluster.nodes[leaving].proc.send_signal(signal.SIGTERM)
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert [r for r in results if isinstance(r, BaseException)] == []
    assert await asyncio.to_thread(cluster.nodes[leaving].proc.wait, 30) == 0
    await converged(client, cluster, set(nodes[1:]))
    assert cluster.sql("SELECT state FROM management_node WHERE uuid = %s", leaving) == [("left",)]
    _assert_no_overlap(_audit(cluster), None, None)


async def test_node_cut_from_the_broker_keeps_its_partitions_and_comes_back(cluster, client):
    """The broker deleting a node's queue (its connection closed) makes the others look at its
    lease, not evict it: the database decides, and its lease is alive. It reconnects and serves."""
    nodes = cluster.start(3)
    statuses = await converged(client, cluster, set(nodes))
    epoch = next(iter(statuses.values()))["epoch"]
    cut = nodes[2]
    held = cluster.sql("SELECT partition, token FROM ring_partition WHERE owner_node_uuid = %s", cut)
    assert await asyncio.to_thread(infra.close_connections, f"ringstack-node-{cut[:8]}") >= 1
    await asyncio.to_thread(cluster.nodes[nodes[0]].wait_for_line, f"node {cut[:8]} seems gone", 15)
    statuses = await converged(client, cluster, set(nodes))
    assert next(iter(statuses.values()))["epoch"] == epoch
    assert cluster.sql("SELECT partition, token FROM ring_partition WHERE owner_node_uuid = %s", cut) == held
    assert not [line for p in cluster.nodes.values() for line in p.lines if "fenced itself" in line]
    ring = Ring.build(epoch, set(nodes))
    resource = next(k for k in (uuidlib.uuid4().hex for _ in range(1000)) if ring.owner(k) == cut)
    assert (await _work(client, resource, 0))["nodeUuid"] == cut


async def test_jobs_are_queryable_and_a_pending_job_can_be_cancelled(cluster, client):
    cluster.start(1)
    resource = uuidlib.uuid4().hex
    first = asyncio.create_task(_work(client, resource, 3))
    await until(
        lambda: asyncio.to_thread(lambda: cluster.sql("SELECT count(*) FROM test_audit")[0][0] == 1),
        20,
        "first",
    )
    queued = asyncio.create_task(_work(client, resource, 0))  # waits behind the first on the same resource

    async def pending_job():
        jobs = await client.api(
            "QueryJob", {"conditions": [{"name": "state", "op": "=", "value": "pending"}]}
        )
        return jobs["inventories"]

    (job,) = await until(pending_job, 20, "the second job to be pending")
    assert job["name"] == "AuditedWork" and job["resourceUuid"] == resource
    assert (await client.api("CancelJob", {"uuid": job["uuid"]}))["state"] == "cancelled"
    with pytest.raises(RingstackError) as err:
        await queued
    assert err.value.code == Sys.CANCELLED
    running = (
        await client.api("QueryJob", {"conditions": [{"name": "state", "op": "=", "value": "running"}]})
    )["inventories"]
    assert [j["resourceUuid"] for j in running] == [resource]
    assert (await client.api("CancelJob", {"uuid": running[0]["uuid"]}))["state"] == "cancelling"
    with pytest.raises(RingstackError) as err:
        await first
    assert err.value.code == Sys.CANCELLED
    with pytest.raises(RingstackError) as err:
        await client.api("CancelJob", {"uuid": job["uuid"]})
    assert err.value.code == Sys.CONFLICT  # already finished
    started = time.monotonic()
    assert (await _work(client, resource, 0))["nodeUuid"]  # the resource's queue is free again
    assert time.monotonic() - started < 10


async def test_frozen_owner_that_wakes_after_takeover_writes_nothing(cluster, client):
    """A crashed machine looks frozen, not dead: its connections stay open. SIGSTOP the owner in
    the middle of a job; the others evict it once its lease expired and the new owner resumes the
    job. SIGCONT it: its job wakes after its sleep and tries to record its end, which the fence
    (lease by the database clock, token on the partition row) must refuse. It then rejoins."""
    nodes = cluster.start(3)
    statuses = await converged(client, cluster, set(nodes))
    ring = Ring.build(next(iter(statuses.values()))["epoch"], set(nodes))
    victim = nodes[0]
    resource = next(k for k in (uuidlib.uuid4().hex for _ in range(1000)) if ring.owner(k) == victim)
    partition = ring.partition(resource)
    call = asyncio.create_task(_work(client, resource, 1.0))

    def victim_working():
        return cluster.sql("SELECT id FROM test_audit WHERE node_uuid = %s AND ended_at IS NULL", victim)

    ((row_id,),) = await until(lambda: asyncio.to_thread(victim_working), 20, "the victim to start the work")
    frozen = cluster.nodes[victim]
    frozen.proc.send_signal(signal.SIGSTOP)
    try:
        frozen_at = cluster.sql("SELECT clock_timestamp()")[0][0]

        def taken_over():
            rows = cluster.sql(
                "SELECT rp.owner_node_uuid FROM ring_partition rp JOIN test_audit a ON a.node_uuid = rp.owner_node_uuid "
                "WHERE rp.partition = %s AND a.resource_uuid = %s AND a.ended_at IS NOT NULL",
                partition,
                resource,
            )
            return rows[0][0] if rows else None

        # the new owner resumed the job and finished it while the victim was still frozen
        new_owner = await until(lambda: asyncio.to_thread(taken_over), 30, "the takeover")
        assert new_owner != victim
        assert cluster.sql("SELECT state FROM management_node WHERE uuid = %s", victim) == [("dead",)]
    finally:
        frozen.proc.send_signal(signal.SIGCONT)
    assert (await call)["nodeUuid"] == new_owner
    # Awake: its lease keeper finds it evicted, it fences itself and joins again as a new member.
    await asyncio.to_thread(frozen.wait_for_line, "was evicted by the others", 30)
    await converged(client, cluster, set(nodes))

    rows = _audit(cluster)
    mine = [r for r in rows if r[2] == victim]
    assert [r[0] for r in mine] == [
        cluster.sql("SELECT job_uuid FROM test_audit WHERE id = %s", row_id)[0][0]
    ]
    assert mine[0][4] is None, "the woken owner recorded the end of its work after the takeover"
    assert all(started < frozen_at for _, _, node, started, _ in rows if node == victim)
    _assert_no_overlap(rows, victim, frozen_at)
    assert cluster.sql("SELECT state, node_uuid, attempts FROM job") == [("succeeded", new_owner, 2)]
    # and the resource is served by its owner again, the woken node included when the ring says so
    assert (await _work(client, resource, 0))["nodeUuid"]
