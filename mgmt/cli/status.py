"""``ringstack-ctl status``: the cluster as the database records it, and as each live node sees it."""

from __future__ import annotations

from typing import Any

from sqlalchemy import create_engine, text

from bus.errors import RingstackError
from bus.sync import SyncClient
from bus.topology import Topology
from mgmt.config import NodeConfig

NODE_STATUS = "ringstack.NodeStatus"


def _recorded(config: NodeConfig) -> list[dict[str, Any]]:
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
            return [dict(r) for r in rows]
    finally:
        engine.dispose()


def cluster_status(config: NodeConfig, timeout: float = 3.0) -> list[dict[str, Any]]:
    nodes = _recorded(config)
    with SyncClient(
        config.broker_url, Topology(config.namespace), process_name="ringstack-ctl-status"
    ) as client:
        for node in nodes:
            entry = {
                "uuid": node["uuid"],
                "address": node["address"],
                "state": node["state"],
                "heartbeatAge": float(node["heartbeat_age"]),
                "partitions": int(node["partitions"]),
            }
            if node["state"] == "alive":
                try:
                    live = client.call(
                        client.topology.node_queue(node["uuid"]).name, NODE_STATUS, {}, timeout=timeout
                    )
                    entry.update(
                        epoch=live["epoch"],
                        members=len(live["members"]),
                        runningJobs=live["runningJobs"],
                        queuedJobs=live["scheduledJobs"] - live["runningJobs"],
                        serialQueueDepth=live["serialQueueDepth"],
                        leaseRemaining=live["leaseRemaining"],
                    )
                except RingstackError as exc:
                    entry["error"] = exc.code
            node.clear()
            node.update(entry)
    return nodes
