"""The asynchronous SDK (``bus.aio.AsyncBus`` on aio-pika): log in, subscribe to the zone events,
create a zone and see its ``zone.<uuid>.created`` event, query, delete. Run against a running node:

    RINGSTACK_BROKER_URL=amqp://guest:guest@127.0.0.1:5672/ RINGSTACK_NAMESPACE=ringstack \\
    RINGSTACK_ADMIN_PASSWORD=password python examples/async_client.py

``await bus.api(<ApiName>, <body>, session=...)`` returns the reply body or raises
``RingstackError``; many calls may be in flight at once on one bus. The bus reconnects by itself
when the broker connection drops (a call in flight then fails with ``SYS.CONNECTION_LOST``).
Events: ``bus.consume(topology.event_queue(<name>, <pattern>), handler)``; the routing keys and
bodies are documented in ``schema/events.py`` (and under "events" in ``ringstack-ctl schema export``).
"""

from __future__ import annotations

import asyncio
import os

from bus.aio import AsyncBus
from bus.envelope import Envelope, new_uuid
from bus.topology import Topology


async def main() -> None:
    url = os.environ.get("RINGSTACK_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/")
    topology = Topology(os.environ.get("RINGSTACK_NAMESPACE", "ringstack"))
    password = os.environ.get("RINGSTACK_ADMIN_PASSWORD", "password")
    bus = AsyncBus(url, topology, process_name="example-async", default_timeout=30)
    await bus.start()
    try:
        login = await bus.api("LogInByAccount", {"accountName": "admin", "password": password})
        session = login["inventory"]["uuid"]

        created: asyncio.Queue[Envelope] = asyncio.Queue()

        async def on_event(env: Envelope) -> None:
            created.put_nowait(env)

        # Bound before the zone is made, so its event cannot be missed.
        events = bus.consume(topology.event_queue(f"example-{new_uuid()}", "zone.*.created"), on_event)
        await bus.start_consumer(events)

        # Independent calls run concurrently on one bus.
        zones = await asyncio.gather(
            *(bus.api("CreateZone", {"name": f"sdk-async-{i}"}, session=session) for i in range(3))
        )
        uuids = {z["inventory"]["uuid"] for z in zones}
        seen = set()
        while seen != uuids:
            env = await asyncio.wait_for(created.get(), 30)
            if env.body["resourceUuid"] in uuids:  # others may create zones meanwhile
                seen.add(env.body["resourceUuid"])
        print("created and saw the events of", sorted(uuids))

        found = await bus.api(
            "QueryZone",
            {"conditions": [{"name": "uuid", "op": "?=", "value": sorted(uuids)}], "count": True},
            session=session,
        )
        print("query count:", found["total"])

        await asyncio.gather(*(bus.api("DeleteZone", {"uuid": u}, session=session) for u in uuids))
        await bus.api("LogOut", {"sessionUuid": session}, session=session)
        print("deleted")
    finally:
        await bus.close()


if __name__ == "__main__":
    asyncio.run(main())
