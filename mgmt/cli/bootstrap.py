"""The all-in-one's one use of the bootstrap (guest) credential: give the CLI an admin access key.

``ringstack-ctl bootstrap-cli`` (run by ``scripts/demo`` once the node is up) connects with the
``broker_url`` setting's own credentials (guest on the all-in-one; an access key in client.toml or
the environment is ignored here), logs in as the admin (the session goes where a CLI login puts
it), deletes the admin's earlier keys of the same name (their broker users go with them: a rerun
leaves exactly one), makes a new one with ``CreateAccessKey`` and writes ``access_key_id`` and
``access_key_secret`` into the CLI's client.toml (mode 0600, its other settings kept). Every later
``ringstack`` call then connects as the key's least-privilege broker user, not as guest.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from mgmt.cli import connect

KEY_NAME = "all-in-one-cli"
_KEY_LINE = re.compile(r"^\s*access_key_(id|secret)\s*=")
# rabbitmqctl runs a few times (an Erlang VM each) per key made or deleted.
KEY_TIMEOUT = 120.0


@dataclass(frozen=True)
class Bootstrapped:
    key_id: str
    replaced: list[str]
    config_path: Path


def write_key(path: Path, key_id: str, secret: str) -> None:
    """Put the key into the TOML file at ``path`` (top-level keys; other lines kept), mode 0600."""
    try:
        old = path.read_text().splitlines()
    except FileNotFoundError:
        old = []
    kept = [line for line in old if not _KEY_LINE.match(line)]
    text = "\n".join([f'access_key_id = "{key_id}"', f'access_key_secret = "{secret}"', *kept]) + "\n"
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o600)  # in case it already existed with a wider mode
    os.replace(tmp, path)


def bootstrap(account: str, password: str, name: str = KEY_NAME) -> Bootstrapped:
    """Log in as ``account`` over the bootstrap credential, replace its key ``name``, write it."""
    from bus.sync import SyncClient
    from bus.topology import Topology

    url, topology = connect.setting("broker_url"), Topology(connect.setting("namespace"))
    with SyncClient(
        url,
        topology,
        default_timeout=float(connect.setting("timeout")),
        process_name="ringstack-bootstrap",
    ) as c:
        login = c.api("LogInByAccount", {"accountName": account, "password": password})["inventory"]
        session, account_uuid = login["uuid"], login["accountUuid"]
        connect.store_session(session)
        conditions = [
            {"name": "name", "op": "=", "value": name},
            {"name": "ownerAccountUuid", "op": "=", "value": account_uuid},
        ]
        old = [
            k["uuid"]
            for k in c.api("QueryAccessKey", {"conditions": conditions}, session=session)["inventories"]
        ]
        for key in old:
            c.api("DeleteAccessKey", {"uuid": key}, session=session, timeout=KEY_TIMEOUT)
        made = c.api(
            "CreateAccessKey",
            {"name": name, "description": "the all-in-one CLI's key (ringstack-ctl bootstrap-cli)"},
            session=session,
            timeout=KEY_TIMEOUT,
        )
    write_key(connect.CONFIG_PATH, made["accessKeyId"], made["accessKeySecret"])
    return Bootstrapped(made["accessKeyId"], old, connect.CONFIG_PATH)
