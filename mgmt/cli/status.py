"""``ringstack-ctl status``: the cluster as the database records it and as each live node sees it,
with a verdict (``healthy``) scripts can use: ``ringstack-ctl status -f json`` exits non-zero when
the cluster is unhealthy. The JSON document's schema is ``ClusterStatus`` below
(``ringstack-ctl status --schema`` prints it as JSON Schema).

Healthy means: at least one node is alive and ready; every node recorded alive answers; the live
nodes agree on the ring epoch and membership; every partition has an owner; no node is draining.
Each failed check is one line of ``problems``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import create_engine, text

from bus.errors import RingstackError
from bus.sync import SyncClient
from bus.topology import Topology
from mgmt.config import NodeConfig
from mgmt.ops import OPS_STATUS

NODE_STATUS = "ringstack.NodeStatus"
PARTITIONS = 256


class NodeStatus(BaseModel):
    uuid: str = Field(description="the node's uuid")
    address: str = Field(description="its node_address setting")
    state: str = Field(description="as the database records it: alive, or left/dead")
    heartbeatAge: float = Field(description="seconds since its last heartbeat")
    partitions: int = Field(description="ring partitions it owns, as recorded")
    answered: bool = Field(default=False, description="whether it answered now (alive nodes only)")
    ready: bool | None = Field(default=None, description="takes API requests (its /readyz)")
    draining: bool | None = Field(default=None, description="drained or stopping")
    opsAddress: str | None = Field(default=None, description="host:port of /healthz, /readyz, /metrics")
    pid: int | None = None
    supervisor: str | None = Field(
        default=None, description="what starts it again after a restart: ringstack-ctl, systemd, or null"
    )
    epoch: int | None = Field(default=None, description="the ring epoch it sees")
    members: int | None = Field(default=None, description="live members on its ring")
    runningJobs: int | None = None
    queuedJobs: int | None = None
    serialQueueDepth: int | None = None
    leaseRemaining: float | None = Field(default=None, description="seconds left on its partition lease")
    error: str | None = Field(default=None, description="the error code when it did not answer")


class ClusterStatus(BaseModel):
    healthy: bool = Field(description="false: see problems; the command then exits 1")
    problems: list[str] = Field(description="one line per failed check")
    epoch: int | None = Field(description="the ring epoch the live nodes agree on (null if they do not)")
    pendingJobs: int = Field(description="job rows waiting to run")
    runningJobs: int = Field(description="job rows running")
    ownedPartitions: int = Field(description="partitions with an owner (of 256)")
    nodes: list[NodeStatus]


def _recorded(config: NodeConfig) -> tuple[list[dict[str, Any]], dict[str, int], int]:
    engine = create_engine(config.database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT uuid, address, state, joined_at, "
                    "round(EXTRACT(EPOCH FROM now() - last_heartbeat)::numeric, 1) AS heartbeat_age, "
                    "(SELECT count(*) FROM ring_partition WHERE owner_node_uuid = m.uuid) AS partitions "
                    "FROM management_node m ORDER BY state, joined_at"
                )
            ).mappings()
            nodes = [dict(r) for r in rows]
            jobs = {
                str(s): int(c)
                for s, c in conn.execute(
                    text(
                        "SELECT state, count(*) FROM job WHERE state IN ('pending', 'running') GROUP BY state"
                    )
                )
            }
            owned = int(
                conn.execute(
                    text("SELECT count(*) FROM ring_partition WHERE owner_node_uuid IS NOT NULL")
                ).scalar()
                or 0
            )
            return nodes, jobs, owned
    finally:
        engine.dispose()


def _client(config: NodeConfig) -> SyncClient:
    return SyncClient(config.broker_url, Topology(config.namespace), process_name="ringstack-ctl")


def cluster_status(config: NodeConfig, timeout: float = 3.0) -> ClusterStatus:
    recorded, jobs, owned = _recorded(config)
    nodes: list[NodeStatus] = []
    with _client(config) as client:
        for row in recorded:
            node = NodeStatus(
                uuid=row["uuid"],
                address=row["address"],
                state=row["state"],
                heartbeatAge=float(row["heartbeat_age"]),
                partitions=int(row["partitions"]),
            )
            if node.state == "alive":
                queue = client.topology.node_queue(node.uuid).name
                try:
                    live = client.call(queue, NODE_STATUS, {}, timeout=timeout)
                    node.answered = True
                    node.epoch = live["epoch"]
                    node.members = len(live["members"])
                    node.runningJobs = live["runningJobs"]
                    node.queuedJobs = live["scheduledJobs"] - live["runningJobs"]
                    node.serialQueueDepth = live["serialQueueDepth"]
                    node.leaseRemaining = live["leaseRemaining"]
                    ops = client.call(queue, OPS_STATUS, {}, timeout=timeout)
                    node.ready, node.draining = ops["ready"], ops["draining"]
                    node.opsAddress, node.pid = ops.get("opsAddress"), ops.get("pid")
                    node.supervisor = ops.get("supervisor")
                except RingstackError as exc:
                    node.error = exc.code
            nodes.append(node)
    return verdict(nodes, jobs, owned)


def verdict(nodes: list[NodeStatus], jobs: dict[str, int], owned: int) -> ClusterStatus:
    problems: list[str] = []
    alive = [n for n in nodes if n.state == "alive"]
    answered = [n for n in alive if n.answered]
    if not any(n.ready for n in answered):
        problems.append("no node is alive and ready")
    problems += [
        f"node {n.uuid} is recorded alive but did not answer ({n.error})" for n in alive if not n.answered
    ]
    problems += [f"node {n.uuid} is draining" for n in answered if n.draining]
    epochs = {n.epoch for n in answered}
    if len(epochs) > 1:
        problems.append(
            f"the live nodes see different ring epochs: {sorted(e for e in epochs if e is not None)}"
        )
    problems += [
        f"node {n.uuid} sees {n.members} members, {len(answered)} answered"
        for n in answered
        if n.members != len(answered)
    ]
    if owned < PARTITIONS:
        problems.append(f"{PARTITIONS - owned} of {PARTITIONS} partitions have no owner")
    return ClusterStatus(
        healthy=not problems,
        problems=problems,
        epoch=epochs.pop() if len(epochs) == 1 else None,
        pendingJobs=jobs.get("pending", 0),
        runningJobs=jobs.get("running", 0),
        ownedPartitions=owned,
        nodes=nodes,
    )


def find_nodes(config: NodeConfig, prefixes: tuple[str, ...]) -> list[str]:
    """Alive nodes' uuids matching the prefixes (each must match exactly one)."""
    recorded, _, _ = _recorded(config)
    alive = [r["uuid"] for r in recorded if r["state"] == "alive"]
    found: list[str] = []
    for prefix in prefixes:
        matches = [u for u in alive if u.startswith(prefix)]
        if len(matches) != 1:
            raise LookupError(
                f"{prefix!r} matches {len(matches)} alive nodes: {', '.join(alive) or 'none alive'}"
            )
        found.append(matches[0])
    return found


def send_ops(config: NodeConfig, node_uuid: str, name: str, timeout: float = 10.0) -> dict[str, Any]:
    with _client(config) as client:
        return client.call(client.topology.node_queue(node_uuid).name, name, {}, timeout=timeout)


def node_gone(config: NodeConfig, node_uuid: str) -> bool:
    """True once the node's queue is gone (its process ended: the broker deletes exclusive queues)."""
    with _client(config) as client:
        try:
            client.call(client.topology.node_queue(node_uuid).name, OPS_STATUS, {}, timeout=2.0)
        except RingstackError as exc:
            return exc.code == "SYS.UNAVAILABLE"
    return False
