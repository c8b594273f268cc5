"""The synchronous SDK (``bus.sync.SyncClient``): log in, create a zone, query it, watch nothing,
delete it. Run against a running node (``ringstack-ctl start``):

    RINGSTACK_BROKER_URL=amqp://guest:guest@127.0.0.1:5672/ RINGSTACK_NAMESPACE=ringstack \\
    RINGSTACK_ADMIN_PASSWORD=password python examples/sync_client.py

Every API is ``client.api(<ApiName>, <body with the API's camelCase fields>, session=...)``; the
reply body is returned, and an error is raised as ``RingstackError`` with a stable ``code``
(``SYS.NOT_FOUND``, ``SYS.TIMEOUT``, ...). ``ringstack <ApiName> --help`` and
``ringstack-ctl schema export`` describe every API's fields and reply.
"""

from __future__ import annotations

import os

from bus.errors import RingstackError, Sys
from bus.sync import SyncClient
from bus.topology import Topology


def main() -> None:
    url = os.environ.get("RINGSTACK_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/")
    topology = Topology(os.environ.get("RINGSTACK_NAMESPACE", "ringstack"))
    password = os.environ.get("RINGSTACK_ADMIN_PASSWORD", "password")
    with SyncClient(url, topology, default_timeout=30, process_name="example-sync") as client:
        login = client.api("LogInByAccount", {"accountName": "admin", "password": password})
        session = login["inventory"]["uuid"]

        zone = client.api(
            "CreateZone", {"name": "sdk-sync", "description": "made by the sync SDK"}, session=session
        )
        uuid = zone["inventory"]["uuid"]
        print("created zone", uuid)

        found = client.api(
            "QueryZone",
            {"conditions": [{"name": "uuid", "op": "=", "value": uuid}], "fields": ["uuid", "name", "state"]},
            session=session,
        )
        print("queried", found["inventories"])

        client.api("DeleteZone", {"uuid": uuid}, session=session)
        try:
            client.api("UpdateZone", {"uuid": uuid, "name": "gone"}, session=session)
        except RingstackError as err:
            assert err.code == Sys.NOT_FOUND
            print("deleted; updating it now fails with", err.code)
        client.api("LogOut", {"sessionUuid": session}, session=session)


if __name__ == "__main__":
    main()
