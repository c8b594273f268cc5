"""Host tracking leaves a host alone while it is being connected (an agent deployment takes a
minute): a ping then would call it Disconnected, mark its VMs Unknown, and be undone by the job."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, update

from schema.db.host import Host
from tests.support.cluster import until
from tests.support.zone import build_zone


@pytest.fixture
def node_config(node_config):
    return node_config.model_copy(update={"host_ping_interval": 0.2, "host_ping_misses": 2})


async def _status(client, host_uuid: str) -> str:
    reply = await client.api("QueryHost", {"conditions": [{"name": "uuid", "op": "=", "value": host_uuid}]})
    return reply["inventories"][0]["status"]


async def test_a_connecting_host_is_not_pinged_into_disconnected(
    node, client, simulator, database_url, tmp_path
):
    zone = await build_zone(client, tmp_path)
    connecting, connected = zone.hosts
    engine = create_engine(database_url)
    try:
        with engine.begin() as conn:
            conn.execute(update(Host).where(Host.uuid == connecting).values(status="Connecting"))
    finally:
        engine.dispose()
    # Neither host answers pings now.
    for host in zone.hosts:
        await simulator.control(
            "configure", {"hostUuid": host, "command": "agent.ping", "fault": {"hang": True}}
        )

    async def disconnected() -> bool:
        return await _status(client, connected) == "Disconnected"

    # The connected one misses its pings and is Disconnected: tracking rounds ran over both.
    await until(disconnected, 20, "the silent connected host to be Disconnected")
    assert await _status(client, connecting) == "Connecting"
