"""The all-in-one's bootstrap (``ringstack-ctl bootstrap-cli``, run by scripts/demo): guest is used
once to make the admin an access key; the CLI's client.toml then holds it (mode 0600), later CLI
calls connect as the key's broker user (they work with guest's password wrong), that user is still
refused the API queue, and a rerun replaces the key (one key, one broker user).
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import tomllib

from bus.credentials import access_key_url, url_with_credentials
from bus.topology import Topology
from mgmt.core.brokeradmin import BrokerAdmin
from tests.integration import test_broker_permissions as permissions
from tests.support.identity import ADMIN_PASSWORD
from tests.support.procs import CTL, ROOT, run_cli

KEY_TIMEOUT = permissions.KEY_TIMEOUT
broker_url = permissions.broker_url  # a vhost of the test's own, removed with its key users


def _bootstrap(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CTL, "bootstrap-cli", "--account", "admin"],
        check=False,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env, "RINGSTACK_ADMIN_PASSWORD": ADMIN_PASSWORD},
        capture_output=True,
        text=True,
        timeout=3 * KEY_TIMEOUT,
        stdin=subprocess.DEVNULL,
    )


async def test_bootstrap_gives_the_cli_an_admin_key_and_a_rerun_replaces_it(
    node, namespace, broker_url, tmp_path
):
    config = tmp_path / "config" / "ringstack" / "client.toml"
    config.parent.mkdir(parents=True)
    config.write_text('timeout = "45"\n')
    config.chmod(0o644)
    env = {
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "RINGSTACK_BROKER_URL": broker_url,  # guest: the bootstrap credential
        "RINGSTACK_NAMESPACE": namespace,
    }
    first = await asyncio.to_thread(_bootstrap, env)
    assert first.returncode == 0, first.stderr
    written = tomllib.loads(config.read_text())
    assert written["timeout"] == "45"  # the other settings are kept
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    key_id, secret = written["access_key_id"], written["access_key_secret"]
    assert BrokerAdmin().client_keys(namespace) == {key_id}

    # Later CLI calls: guest's password is wrong, so only the key's broker user can connect.
    cli_env = {**env, "RINGSTACK_BROKER_URL": url_with_credentials(broker_url, "guest", "wrong")}
    found = await asyncio.to_thread(run_cli, ["-f", "json", "QueryAccessKey"], cli_env)
    assert found.returncode == 0, found.stderr
    assert [k["uuid"] for k in json.loads(found.stdout)["inventories"]] == [key_id]
    made = await asyncio.to_thread(run_cli, ["-f", "json", "CreateZone", "name=demo"], cli_env)
    assert made.returncode == 0, made.stderr  # a mutating call, as scripts/demo makes them
    assert json.loads(made.stdout)["inventory"]["name"] == "demo"
    # Without the key, the same settings cannot reach the broker (the proof it was the key).
    config.write_text('timeout = "45"\n')
    refused = await asyncio.to_thread(run_cli, ["QueryAccessKey"], cli_env)
    assert refused.returncode != 0

    # The key's broker user is the fenced client's: RabbitMQ refuses it the API queue.
    key_url = access_key_url(broker_url, namespace, key_id, secret)

    async def ignore(_message):
        pass

    async def consume_api(channel):
        queue = await channel.get_queue(Topology(namespace).api_queue.name, ensure=False)
        await queue.consume(ignore)

    assert "ACCESS_REFUSED" in await permissions._refused(key_url, consume_api)

    # A rerun replaces the key: the old one and its broker user are gone, one of each is left.
    second = await asyncio.to_thread(_bootstrap, env)
    assert second.returncode == 0, second.stderr
    assert key_id in second.stdout  # named as replaced
    new_id = tomllib.loads(config.read_text())["access_key_id"]
    assert new_id != key_id
    assert BrokerAdmin().client_keys(namespace) == {new_id}
    again = await asyncio.to_thread(run_cli, ["-f", "json", "QueryAccessKey"], cli_env)
    assert again.returncode == 0, again.stderr
    assert [k["uuid"] for k in json.loads(again.stdout)["inventories"]] == [new_id]
