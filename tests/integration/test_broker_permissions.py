"""API clients fenced at the broker: an access key's broker user can call APIs, read its own replies
and its own account's events, and RabbitMQ itself refuses (ACCESS_REFUSED) everything else: the
API queue, other clients' replies, other accounts' events, node and agent queues.

Everything runs in a vhost of the test's own (removed afterwards, queues, exchanges and all), with
a node, a guest client for the admin's set-up, and clients connecting with access keys.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator

import aio_pika
import aiormq
import pytest

from bus.aio import AsyncBus
from bus.credentials import access_key_url, url_with_credentials
from bus.envelope import Envelope
from bus.errors import RingstackError, Sys
from bus.sync import SyncClient
from bus.topology import Topology
from mgmt.core.brokeradmin import BrokerAdmin
from tests.support import infra
from tests.support.cluster import until
from tests.support.procs import run_cli

KEY_TIMEOUT = 60


@pytest.fixture
def broker_url(namespace: str) -> Iterator[str]:
    """A vhost of this test's own; guest (the nodes' user here) has every right in it."""
    vhost = namespace
    infra.rabbitmqctl("add_vhost", vhost)
    infra.rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    try:
        yield url_with_credentials(infra.BROKER_URL, "guest", "guest", vhost)
    finally:
        admin = BrokerAdmin()
        for key in admin.client_keys(namespace):
            admin.delete_client_user(namespace, key)
        infra.rabbitmqctl("delete_vhost", vhost)


class Key:
    def __init__(self, reply: dict, account_uuid: str, session: str, namespace: str, broker_url: str) -> None:
        self.id = reply["accessKeyId"]
        self.secret = reply["accessKeySecret"]
        self.account_uuid = account_uuid
        self.session = session
        self.url = access_key_url(broker_url, namespace, self.id, self.secret)


@pytest.fixture
async def keys(node, client, namespace, broker_url) -> AsyncIterator[dict[str, Key]]:
    """Accounts alice and bob (normal) with an access key each, made through the API."""
    made: dict[str, Key] = {}
    for name in ("alice", "bob"):
        account = await client.new_account(name)
        # rabbitmqctl runs three times (an Erlang VM each): seconds on a loaded machine.
        reply = await account.api("CreateAccessKey", {"name": f"{name}-laptop"}, timeout=KEY_TIMEOUT)
        made[name] = Key(reply, account.account_uuid, account.session, namespace, broker_url)
    yield made


async def _refused(url: str, action) -> str:
    """Run ``action(channel)`` as the key's user; RabbitMQ must close the channel: ACCESS_REFUSED."""
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        with pytest.raises(aiormq.exceptions.ChannelAccessRefused) as err:
            await action(channel)
        return str(err.value)
    finally:
        await connection.close()


async def _allowed(url: str, action):
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        return await action(channel)
    finally:
        await connection.close()


async def _key_bus(key: Key, namespace: str) -> AsyncBus:
    bus = AsyncBus(key.url, Topology(namespace), process_name="test-key-client", default_timeout=10)
    await bus.start()
    return bus


async def test_a_client_with_an_access_key_calls_apis_and_gets_its_own_events(keys, client, namespace):
    alice = keys["alice"]
    # The blocking SDK (the CLI's client): a call and its reply (in a thread: the node runs on
    # this test's event loop).
    with SyncClient(alice.url, Topology(namespace), default_timeout=10) as sync:
        assert sync.client_key == alice.id
        found = (await asyncio.to_thread(sync.api, "QueryAccessKey", {}, session=alice.session))[
            "inventories"
        ]
        assert [k["uuid"] for k in found] == [alice.id]  # bob's key is not visible to alice
        assert not {"accessKeySecret", "secretHash"} & found[0].keys()
        assert json.dumps(found).find(alice.secret) == -1
    # The async SDK: calls and an event subscription on its own account.
    bus = await _key_bus(alice, namespace)
    try:
        received: asyncio.Queue = asyncio.Queue()

        async def on_event(env):
            received.put_nowait(env.body)

        spec = bus.topology.client_event_queue(
            alice.id, "mine", alice.account_uuid, "access_key.*.*", "account.*.*"
        )
        await bus.start_consumer(bus.consume(spec, on_event))
        second = await bus.api(
            "CreateAccessKey", {"name": "alice-ci"}, session=alice.session, timeout=KEY_TIMEOUT
        )
        event = await asyncio.wait_for(received.get(), 10)
        assert (event["resourceUuid"], event["action"]) == (second["accessKeyId"], "created")
        # An event whose owner the node looks up (the account's own row): alice's, so she gets it.
        await client.api("UpdateAccount", {"uuid": alice.account_uuid, "description": "renamed"})
        event = await asyncio.wait_for(received.get(), 10)
        assert (event["resourceUuid"], event["action"]) == (alice.account_uuid, "updated")
        # bob's changes never reach alice.
        await client.api("UpdateAccount", {"uuid": keys["bob"].account_uuid, "description": "bob's"})
        await client.api("UpdateAccount", {"uuid": alice.account_uuid, "description": "again"})
        event = await asyncio.wait_for(received.get(), 10)
        assert event["resourceUuid"] == alice.account_uuid
        assert received.empty()
        await bus.api(
            "DeleteAccessKey", {"uuid": second["accessKeyId"]}, session=alice.session, timeout=KEY_TIMEOUT
        )
    finally:
        await bus.close()


async def test_the_broker_refuses_an_access_key_everything_but_its_own_paths(keys, client, namespace):
    alice, bob = keys["alice"], keys["bob"]
    topology = Topology(namespace)
    # bob is connected: his reply queue exists, and alice will try to read it.
    with SyncClient(bob.url, topology, default_timeout=10) as bob_client:
        await asyncio.to_thread(bob_client.api, "QueryAccessKey", {}, session=bob.session)
        bob_reply_queue = bob_client._reply_spec.name
        await _attacks(alice, bob, topology, bob_reply_queue)


async def _attacks(alice: Key, bob: Key, topology: Topology, bob_reply_queue: str) -> None:
    own = topology.client_queue_prefix(alice.id) + "probe"
    message = aio_pika.Message(b'{"name": "QueryZone"}')

    async def ignore(_message):
        pass

    # Consume the API queue (stealing other clients' requests).
    async def consume_api(channel):
        queue = await channel.get_queue(topology.api_queue.name, ensure=False)
        await queue.consume(ignore)

    assert "ACCESS_REFUSED" in await _refused(alice.url, consume_api)

    # Publish to node and agent queues, or the API queue itself, through the default exchange.
    for queue in (
        topology.api_queue.name,
        topology.node_queue("n" * 32).name,
        topology.agent_queue("h" * 32).name,
    ):

        async def publish_default(channel, queue=queue):
            await channel.default_exchange.publish(message, routing_key=queue)

        assert "ACCESS_REFUSED" in await _refused(alice.url, publish_default)

    # Publish on the nodes' events exchange (forged events, forged agent reports).
    async def publish_event(channel):
        exchange = await channel.get_exchange(topology.events_exchange.name, ensure=False)
        await exchange.publish(message, routing_key="agent." + "h" * 32 + ".vm_state")

    assert "ACCESS_REFUSED" in await _refused(alice.url, publish_event)

    async def declare_own(channel):
        return await channel.declare_queue(own, exclusive=True, auto_delete=True)

    # Bind to another account's events, to every account's, or to the nodes' events exchange.
    for exchange, key in (
        (topology.account_events_exchange.name, f"{bob.account_uuid}.#"),
        (topology.account_events_exchange.name, "#"),
        (topology.account_events_exchange.name, "*.account.*.*"),
        (topology.events_exchange.name, "#"),
        (topology.events_exchange.name, "account.*.*"),
    ):

        async def bind(channel, exchange=exchange, key=key):
            queue = await declare_own(channel)
            await queue.bind(exchange, key)

        assert "ACCESS_REFUSED" in await _refused(alice.url, bind), (exchange, key)

    # Read another client's replies: consume its queue, bind it, route its replies into one's own.
    async def consume_bobs(channel):
        queue = await channel.get_queue(bob_reply_queue, ensure=False)
        await queue.consume(ignore)

    assert "ACCESS_REFUSED" in await _refused(alice.url, consume_bobs)

    async def bind_replies(channel):
        queue = await declare_own(channel)
        await queue.bind(topology.replies_exchange.name, bob_reply_queue)

    assert "ACCESS_REFUSED" in await _refused(alice.url, bind_replies)

    async def squat_bobs_prefix(channel):
        await channel.declare_queue(topology.client_queue_prefix(bob.id) + "evil", exclusive=True)

    assert "ACCESS_REFUSED" in await _refused(alice.url, squat_bobs_prefix)

    async def declare_exchange(channel):
        await channel.declare_exchange(f"{topology.namespace}.evil", "fanout")

    assert "ACCESS_REFUSED" in await _refused(alice.url, declare_exchange)

    # And the legitimate paths, on the same raw connection: its own queue bound to its own account.
    async def bind_own_events(channel):
        queue = await declare_own(channel)
        await queue.bind(topology.account_events_exchange.name, f"{alice.account_uuid}.#")
        entry = await channel.get_exchange(topology.api_entry_exchange.name, ensure=False)
        await entry.publish(aio_pika.Message(b"{}"), routing_key=topology.api_queue.name)
        return True

    assert await _allowed(alice.url, bind_own_events)


async def test_deleting_the_key_or_its_account_deletes_its_broker_user(keys, client, namespace):
    alice, bob = keys["alice"], keys["bob"]
    topology = Topology(namespace)
    admin = BrokerAdmin()
    assert {alice.id, bob.id} <= admin.client_keys(namespace)

    # Another account cannot delete alice's key, nor tell it from a key that does not exist.
    codes = set()
    for uuid in (alice.id, "0" * 32):
        with pytest.raises(RingstackError) as err:
            await client.api("DeleteAccessKey", {"uuid": uuid}, session=bob.session)
        codes.add(err.value.code)
    assert codes == {Sys.NOT_FOUND}

    await client.api("DeleteAccessKey", {"uuid": alice.id}, session=alice.session, timeout=KEY_TIMEOUT)
    assert alice.id not in admin.client_keys(namespace)
    with pytest.raises(RingstackError) as err:
        gone = SyncClient(alice.url, topology, default_timeout=5, connect_timeout=5)
        await asyncio.to_thread(gone.api, "QueryZone", {})
    assert err.value.code in (Sys.UNAVAILABLE, Sys.PERMISSION_DENIED)

    # The account goes (its keys do not keep it), and its keys' broker users with it.
    await client.api("DeleteAccount", {"uuid": bob.account_uuid})
    await until(
        lambda: asyncio.to_thread(lambda: bob.id not in admin.client_keys(namespace) or None),
        30,
        "bob's key's broker user deleted",
    )


async def test_the_cli_calls_and_follows_events_with_an_access_key(keys, namespace, broker_url, tmp_path):
    """``RINGSTACK_ACCESS_KEY_ID``/``_SECRET`` turn the CLI into a fenced client: its calls work, and
    ``ringstack events`` shows its own account's events, keyed ``<kind>.<uuid>.<action>``."""
    alice = keys["alice"]
    env = {
        "RINGSTACK_BROKER_URL": broker_url,  # guest's URL: the key replaces its user and password
        "RINGSTACK_NAMESPACE": namespace,
        "RINGSTACK_SESSION": alice.session,
        "RINGSTACK_ACCESS_KEY_ID": alice.id,
        "RINGSTACK_ACCESS_KEY_SECRET": alice.secret,
        "XDG_CONFIG_HOME": str(tmp_path),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
    }
    done = await asyncio.to_thread(run_cli, ["QueryAccessKey", "-f", "value", "-c", "uuid"], env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [alice.id]

    follow = asyncio.create_task(
        asyncio.to_thread(
            run_cli, ["events", "--kind", "access_key", "--count", "1", "--for", "30", "-f", "json"], env
        )
    )
    # The stream binds before it reads; keep making keys until one is seen (or the stream gives up).
    made = []
    while not follow.done() and len(made) < 10:
        made.append((await client_api_create(alice, namespace))["accessKeyId"])
        await asyncio.wait([follow], timeout=2)
    done = await follow
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.splitlines()[0])
    assert seen["key"].startswith("access_key.") and seen["body"]["resourceUuid"] in made


async def client_api_create(key: Key, namespace: str) -> dict:
    bus = await _key_bus(key, namespace)
    try:
        return await bus.api(
            "CreateAccessKey", {"name": "made-by-cli-test"}, session=key.session, timeout=KEY_TIMEOUT
        )
    finally:
        await bus.close()


async def test_a_node_answers_api_requests_only_into_reply_queues(node, namespace):
    """The node may publish anywhere, so a request whose reply address is a node's or an agent's
    queue is refused and answered nowhere: a client cannot use the node to reach those queues."""
    topology = Topology(namespace)
    for address in (
        topology.agent_queue("h" * 32).name,
        topology.node_queue(node.uuid).name,
        topology.api_queue.name,
    ):
        env = Envelope(name="QueryZone", kind="api", body={}, reply_to=address)
        with pytest.raises(RingstackError) as err:
            await node._on_api(env)
        assert err.value.code == Sys.INVALID_ARGUMENT and env.reply_to is None
    # A reply queue (here an access key client's) is fine: the request goes on to authentication.
    env = Envelope(
        name="QueryZone", kind="api", body={}, reply_to=topology.client_queue_prefix("k" * 32) + "x"
    )
    with pytest.raises(RingstackError) as err:
        await node._on_api(env)
    assert err.value.code == Sys.AUTH_REQUIRED and env.reply_to is not None


async def test_an_admins_key_reads_every_accounts_events(keys, client, namespace, broker_url):
    made = await client.api("CreateAccessKey", {"name": "ops"}, timeout=KEY_TIMEOUT)
    admin_key = Key(made, client.account_uuid, client.session, namespace, broker_url)
    bus = await _key_bus(admin_key, namespace)
    try:
        received: asyncio.Queue = asyncio.Queue()

        async def on_event(env):
            received.put_nowait(env.body)

        # "*" for the account: every account's (only an admin's key may bind that).
        spec = bus.topology.client_event_queue(admin_key.id, "all", "*", "account.*.updated")
        await bus.start_consumer(bus.consume(spec, on_event))
        await client.api("UpdateAccount", {"uuid": keys["bob"].account_uuid, "description": "seen by admins"})
        event = await asyncio.wait_for(received.get(), 10)
        assert event["resourceUuid"] == keys["bob"].account_uuid
    finally:
        await bus.close()
    # The same binding by a normal account's key is refused.
    alice = keys["alice"]

    async def bind_all(channel):
        queue = await channel.declare_queue(
            Topology(namespace).client_queue_prefix(alice.id) + "all", exclusive=True, auto_delete=True
        )
        await queue.bind(Topology(namespace).account_events_exchange.name, "*.account.*.updated")

    assert "ACCESS_REFUSED" in await _refused(alice.url, bind_all)


async def test_an_events_owner_is_that_kinds_row_owner_even_when_another_kind_shares_its_uuid(keys, node):
    """Issue 11's uuid squatting: a row of another kind under alice's account uuid, owned by bob,
    must not route alice's account events to bob. The uuid namespace refuses the row itself; the
    owner cache, keyed by (kind, uuid), must not have learnt bob from the refused flush either."""
    from schema.db.zone import Zone

    alice, bob = keys["alice"], keys["bob"]

    def squat(session):
        session.add(
            Zone(uuid=alice.account_uuid, name="squat", state="Enabled", owner_account_uuid=bob.account_uuid)
        )

    with pytest.raises(RingstackError) as refused:
        await node.db.run(squat)
    assert refused.value.code == Sys.CONFLICT
    assert await node.events.owners.owner_of("account", alice.account_uuid) == alice.account_uuid
    assert await node.events.owners.owner_of("zone", alice.account_uuid) != bob.account_uuid


async def _publish_api(key: Key, topology: Topology, env: Envelope, **properties) -> None:
    """Publish ``env`` to the API entry as ``key``'s user, AMQP properties as given (raw: an attacker
    chooses every one of them)."""

    async def publish(channel):
        entry = await channel.get_exchange(topology.api_entry_exchange.name, ensure=False)
        await entry.publish(
            aio_pika.Message(env.encode(), correlation_id=env.id, reply_to=env.reply_to, **properties),
            routing_key=topology.api_queue.name,
        )

    await _allowed(key.url, publish)


async def test_a_key_cannot_have_replies_sent_into_another_clients_queue(keys, client, namespace, caplog):
    """Reply injection: bob's requests naming alice's reply queue, or a guest process's, as their
    reply address are acked and dropped (one warning each), whether bob names himself in user_id
    or leaves it out; requests sent after them are answered, and only they reach those queues."""
    alice, bob = keys["alice"], keys["bob"]
    topology = Topology(namespace)
    alice_bus = await _key_bus(alice, namespace)
    try:
        forged: list[tuple[asyncio.Future, str]] = []
        for victim in (alice_bus, client):
            for user_id in (topology.client_username(bob.id), None):
                env = Envelope(
                    name="QueryAccessKey", kind="api", body={}, session=bob.session, reply_to=victim.reply_queue
                )
                forged.append((victim.expect_reply(env.id), env.id))
                await _publish_api(bob, topology, env, **({"user_id": user_id} if user_id else {}))

        def dropped() -> list[str]:
            return [r.getMessage() for r in caplog.records if "may not ask for replies" in r.getMessage()]

        warnings = await until(lambda: len(dropped()) >= 4 and dropped(), 30, "bob's four requests dropped")
        assert all(r.levelname == "WARNING" for r in caplog.records if "may not ask for replies" in r.getMessage())
        assert {w.rsplit(" ", 1)[1] for w in warnings} == {repr(alice_bus.reply_queue), repr(client.reply_queue)}
        # Positive signals after them: bob's own request is answered, and so are the victims'.
        bob_bus = await _key_bus(bob, namespace)
        try:
            mine = await bob_bus.api("QueryAccessKey", {}, session=bob.session)
            assert [k["uuid"] for k in mine["inventories"]] == [bob.id]
        finally:
            await bob_bus.close()
        theirs = await alice_bus.api("QueryAccessKey", {}, session=alice.session)
        assert [k["uuid"] for k in theirs["inventories"]] == [alice.id]
        await client.api("QueryZone", {})
        assert not any(fut.done() for fut, _ in forged)  # nothing of bob's reached alice or the guest
    finally:
        await alice_bus.close()


async def test_the_broker_refuses_a_forged_user_id(keys, namespace):
    """The check above rests on RabbitMQ refusing a user_id that is not the connection's user."""
    alice, bob = keys["alice"], keys["bob"]
    topology = Topology(namespace)
    for forged in (topology.client_username(alice.id), "guest"):
        env = Envelope(
            name="QueryAccessKey",
            kind="api",
            body={},
            session=bob.session,
            reply_to=topology.client_queue_prefix(alice.id) + "x",
        )

        async def publish(channel, forged=forged, env=env):
            entry = await channel.get_exchange(topology.api_entry_exchange.name, ensure=False)
            await entry.publish(
                aio_pika.Message(env.encode(), reply_to=env.reply_to, user_id=forged),
                routing_key=topology.api_queue.name,
            )
            # Publishes are asynchronous: a declare after it returns only once the broker has
            # judged the publish, and fails with the channel the broker closed.
            await channel.declare_queue(topology.client_queue_prefix(bob.id) + "probe", exclusive=True)

        connection = await aio_pika.connect(bob.url)
        try:
            channel = await connection.channel(publisher_confirms=True)
            with pytest.raises(aiormq.exceptions.AMQPChannelError) as err:
                await publish(channel)
            assert "PRECONDITION_FAILED" in str(err.value) or "ACCESS_REFUSED" in str(err.value), err.value
        finally:
            await connection.close()
