"""The asynchronous SDK (``bus.aio.AsyncBus`` on aio-pika): log in, subscribe to the zone events,
create a zone and see its ``zone.<uuid>.created`` event, query, delete. Run against a running node:

    RINGSTACK_BROKER_URL=amqp://guest:guest@127.0.0.1:5672/ RINGSTACK_NAMESPACE=ringstack \\
    RINGSTACK_ADMIN_PASSWORD=password python examples/async_client.py

It connects with an access key (``RINGSTACK_ACCESS_KEY_ID``/``_SECRET``): the broker lets that
user call APIs and read its own account's events, nothing else. Without one (the all-in-one
bootstrap), it makes one over the URL's own credentials first, and deletes it at the end.

``await bus.api(<ApiName>, <body>, session=...)`` returns the reply body or raises
``RingstackError``; many calls may be in flight at once on one bus. The bus reconnects by itself
when the broker connection drops (a call in flight then fails with ``SYS.CONNECTION_LOST``).
Events: ``bus.consume(topology.client_event_queue(<key id>, <name>, <account uuid>, <pattern>),
handler)`` (nodes use ``topology.event_queue``); the routing keys and
bodies are documented in ``schema/events.py`` (and under "events" in ``ringstack-ctl schema export``).
"""

from __future__ import annotations

import asyncio
import os

from bus.aio import AsyncBus
from bus.credentials import access_key_url
from bus.envelope import Envelope, new_uuid
from bus.topology import Topology


async def bootstrap_key(url: str, topology: Topology, password: str) -> tuple[str, str]:
    """The all-in-one's first access key, made over the bootstrap credentials in ``url``."""
    bus = AsyncBus(url, topology, process_name="example-bootstrap", default_timeout=30)
    await bus.start()
    try:
        login = await bus.api("LogInByAccount", {"accountName": "admin", "password": password})
        made = await bus.api("CreateAccessKey", {"name": "example"}, session=login["inventory"]["uuid"])
        return made["accessKeyId"], made["accessKeySecret"]
    finally:
        await bus.close()


async def delete_key(url: str, topology: Topology, password: str, key_id: str) -> None:
    bus = AsyncBus(url, topology, process_name="example-bootstrap", default_timeout=30)
    await bus.start()
    try:
        login = await bus.api("LogInByAccount", {"accountName": "admin", "password": password})
        await bus.api("DeleteAccessKey", {"uuid": key_id}, session=login["inventory"]["uuid"])
    finally:
        await bus.close()


async def main() -> None:
    url = os.environ.get("RINGSTACK_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/")
    topology = Topology(os.environ.get("RINGSTACK_NAMESPACE", "ringstack"))
    password = os.environ.get("RINGSTACK_ADMIN_PASSWORD", "password")
    key_id, secret = os.environ.get("RINGSTACK_ACCESS_KEY_ID"), os.environ.get("RINGSTACK_ACCESS_KEY_SECRET")
    made_key = not (key_id and secret)
    if made_key:
        key_id, secret = await bootstrap_key(url, topology, password)
    assert key_id and secret
    bus = AsyncBus(
        access_key_url(url, topology.namespace, key_id, secret),
        topology,
        process_name="example-async",
        default_timeout=30,
    )
    await bus.start()
    try:
        login = await bus.api("LogInByAccount", {"accountName": "admin", "password": password})
        session, account = login["inventory"]["uuid"], login["inventory"]["accountUuid"]

        created: asyncio.Queue[Envelope] = asyncio.Queue()

        async def on_event(env: Envelope) -> None:
            created.put_nowait(env)

        # Bound before the zone is made, so its event cannot be missed.
        events = bus.consume(
            topology.client_event_queue(key_id, f"example-{new_uuid()}", account, "zone.*.created"), on_event
        )
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
        if made_key:
            await delete_key(url, topology, password, key_id)


if __name__ == "__main__":
    asyncio.run(main())
