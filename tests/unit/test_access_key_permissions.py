"""The broker permissions of an access key's user, as RabbitMQ applies them (an unanchored regex
search on resource names and, on the account-events exchange, on binding keys). The broker itself
is tested in tests/integration/test_broker_permissions.py; this pins the regexes' edges."""

from __future__ import annotations

import re

from bus.credentials import access_key_url
from bus.topology import Topology
from mgmt.core.brokeradmin import client_permissions, client_topic_permissions

NS = "ring.stack"  # a dot in the namespace must not act as a wildcard
KEY = "ab12"
ACCOUNT = "c" * 32
T = Topology(NS)


def _allows(pattern: str, name: str) -> bool:
    return re.search(pattern, name) is not None


def test_a_key_configures_and_reads_only_its_own_queues():
    configure, write, read = client_permissions(NS, KEY)
    own = f"{NS}.reply.{KEY}.p1"
    for pattern in (configure, write, read):
        assert _allows(pattern, own)
        for other in (
            f"{NS}.reply.{KEY}",  # not under the prefix
            f"{NS}.reply.{KEY}5.p1",  # another key whose id starts with this one's
            f"{NS}.reply.ab.p1",
            f"{NS}.reply.p1",  # a node's reply queue
            f"ringXstack.reply.{KEY}.p1",
            f"{NS}.api",
            f"{NS}.agent.h",
            f"{NS}.node.n",
            "amq.default",
            f"{NS}.events",
            f"{NS}.replies",
            f"x{NS}.reply.{KEY}.p1",
        ):
            assert not _allows(pattern, other), (pattern, other)
    assert not _allows(configure, f"{NS}.api-entry") and not _allows(configure, f"{NS}.account-events")
    assert _allows(write, f"{NS}.api-entry") and not _allows(write, f"{NS}.account-events")
    assert _allows(read, f"{NS}.account-events") and not _allows(read, f"{NS}.api-entry")


def test_a_normal_keys_bindings_must_start_with_its_account():
    exchange, write, read = client_topic_permissions(NS, ACCOUNT, is_admin=False)
    assert exchange == T.account_events_exchange.name and write == "^$"
    assert _allows(read, f"{ACCOUNT}.#") and _allows(read, f"{ACCOUNT}.vm.*.*")
    for key in ("#", "*.#", "*.vm.*.*", f"{'d' * 32}.#", f"#.{ACCOUNT}", f"{ACCOUNT}", f"x{ACCOUNT}.#"):
        assert not _allows(read, key), key
    assert client_topic_permissions(NS, ACCOUNT, is_admin=True)[2] == ".*"


def test_clients_are_recognised_by_their_broker_username():
    assert T.client_key_of(T.client_username(KEY)) == KEY
    for user in ("guest", f"{NS}.key.", f"{NS}.key.a.b", f"other.key.{KEY}", f"{NS}.agent.h", None):
        assert T.client_key_of(user) is None, user
    url = access_key_url("amqp://guest:guest@10.0.0.1:5672/vh", NS, KEY, "s/e:c@r")
    assert url == f"amqp://{NS}.key.{KEY}:s%2Fe%3Ac%40r@10.0.0.1:5672/vh"


def test_api_requests_go_through_the_entry_exchange():
    assert T.route_to(T.api_queue.name) == (T.api_entry_exchange.name, T.api_queue.name)
    assert (T.api_entry_exchange.name, T.api_queue.name) in T.api_queue.bindings
    assert T.route_to(T.agent_queue("h").name) == ("", T.agent_queue("h").name)
    assert T.client_reply_queue(KEY, "p").bindings == ()  # nothing routes into it but the default exchange


def test_a_request_is_answered_only_into_reply_queues_its_sender_may_ask_for():
    own, other = T.client_reply_queue(KEY, "p").name, T.client_reply_queue("ab", "p").name
    process = T.reply_queue("p").name  # a node's or the bootstrap guest's
    key_user = T.client_username(KEY)
    for via_default in (True, False):
        assert T.may_answer(own, key_user, via_default_exchange=via_default)
        assert T.may_answer(f"{own[:-1]}events.s", key_user, via_default_exchange=via_default)
        for address in (other, f"{NS}.reply.{KEY}5.p", process, f"{NS}.node.n"):
            assert not T.may_answer(address, key_user, via_default_exchange=via_default), address
        # A key's queue only for that key's own user: not a node's, nor one that names nobody.
        for user in ("guest", T.client_username("ab"), None):
            assert not T.may_answer(own, user, via_default_exchange=via_default), user
        assert T.may_answer(process, "guest", via_default_exchange=via_default)
    # No user_id: answered only when it came through the default exchange (no key may publish there).
    assert T.may_answer(process, None, via_default_exchange=True)
    assert not T.may_answer(process, None, via_default_exchange=False)
