"""Per-agent RabbitMQ users with least privilege, managed with ``rabbitmqctl`` on the broker's host.

An agent of host H in namespace NS may (RabbitMQ permission regexes, vhost of the broker URL):

- configure and read: only ``NS.agent.H`` (its command queue) and ``NS.agent.H.reply`` (the reply
  queue every bus declares, bound to nothing for agents; see ``agents.kvm.bus``);
- write: only the exchanges ``NS.replies`` (its answers), ``NS.events`` (its reports) and
  ``NS.dead-letter`` (RabbitMQ demands write access to the dead-letter exchange of a queue one
  declares, and the agent queue has one; that exchange only feeds the bounded dead-letter queue);
- on ``NS.events``, a topic exchange, only routing keys ``agent.H.<report>`` (topic permissions).

So an agent cannot publish to the API queue, a node queue or another agent's queue (they are
reached through the default exchange, which it may not write), cannot consume another agent's
queue, and cannot report on behalf of another host. ``rabbitmqctl`` takes the password on stdin, so
it never appears in a process list. Every call is blocking (an Erlang VM starts each time, 1-3 s);
the async wrappers run it in a thread.

An API client's access key (mgmt/services/accesskey) is a user ``NS.key.K`` that may:

- configure and read: only its own queues ``NS.reply.K.*`` (reply queues, event subscriptions);
- write: only the exchange ``NS.api-entry`` (bound to the API queue alone) and its own queues (to
  bind them);
- read the exchange ``NS.account-events`` and, there, bind only keys ``<its account>.*`` (topic
  permissions; an admin account's keys: every key).

So a client cannot consume (steal) the API queue, read or bind another client's queues, publish to
a node or agent queue (the default exchange is not writable), bind to the node-side events
exchange, or bind to another account's events: RabbitMQ closes the channel with ACCESS_REFUSED.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import subprocess
import urllib.parse
from dataclasses import dataclass

from bus.credentials import url_with_credentials
from bus.errors import RingstackError, Sys
from bus.topology import Topology


@dataclass(frozen=True)
class AgentCredentials:
    username: str
    password: str
    vhost: str

    def url(self, broker_url: str) -> str:
        """``broker_url`` (host and port as the agent reaches the broker) with these credentials."""
        return url_with_credentials(broker_url, self.username, self.password, self.vhost)


def vhost_of(broker_url: str) -> str:
    path = urllib.parse.urlsplit(broker_url).path
    return urllib.parse.unquote(path[1:]) if len(path) > 1 else "/"


def agent_username(namespace: str, host_uuid: str) -> str:
    return f"{namespace}.agent.{host_uuid}"


def agent_permissions(namespace: str, host_uuid: str) -> tuple[str, str, str]:
    """(configure, write, read) regexes of the agent of ``host_uuid``."""
    ns, host = re.escape(namespace), re.escape(host_uuid)
    own = rf"^{ns}\.agent\.{host}(\.reply)?$"
    return own, rf"^{ns}\.(replies|events|dead-letter)$", own


def agent_topic_permissions(namespace: str, host_uuid: str) -> tuple[str, str, str]:
    """(exchange, write, read) topic permissions: reports only under the agent's own host."""
    return f"{namespace}.events", rf"^agent\.{re.escape(host_uuid)}\.[^.]+$", "^$"


def client_permissions(namespace: str, key_id: str) -> tuple[str, str, str]:
    """(configure, write, read) regexes of access key ``key_id``'s user."""
    topology = Topology(namespace)
    own = re.escape(topology.client_queue_prefix(key_id)) + ".+"
    entry = re.escape(topology.api_entry_exchange.name)
    events = re.escape(topology.account_events_exchange.name)
    return rf"^{own}$", rf"^({own}|{entry})$", rf"^({own}|{events})$"


def client_topic_permissions(namespace: str, account_uuid: str, is_admin: bool) -> tuple[str, str, str]:
    """(exchange, write, read) topic permissions: bind only under the key's own account."""
    read = ".*" if is_admin else rf"^{re.escape(account_uuid)}\."
    return Topology(namespace).account_events_exchange.name, "^$", read


NO_SUCH_USER_EXIT = 67  # rabbitmqctl's exit code (EX_NOUSER) for a user that does not exist


class BrokerAdmin:
    """Manages agent users through ``rabbitmqctl`` (run as the broker host's root or rabbitmq)."""

    def __init__(self, rabbitmqctl: str = "rabbitmqctl", timeout: float = 60) -> None:
        self.rabbitmqctl = rabbitmqctl
        self.timeout = timeout

    def _ctl(self, *args: str, stdin: str | None = None) -> str:
        try:
            done = subprocess.run(
                [self.rabbitmqctl, "--quiet", *args],
                input=stdin,
                capture_output=True,
                text=True,
                timeout=self.timeout,
                check=False,
            )
        except FileNotFoundError:
            raise RingstackError(
                Sys.UNAVAILABLE, f"{self.rabbitmqctl} is not installed here; cannot manage broker users"
            ) from None
        except subprocess.TimeoutExpired:
            raise RingstackError(Sys.TIMEOUT, f"rabbitmqctl {args[0]} took over {self.timeout} s") from None
        if done.returncode != 0:
            raise RingstackError(
                Sys.UNAVAILABLE,
                f"rabbitmqctl {args[0]} failed: {(done.stderr or done.stdout).strip()[:500]}",
                details={"command": args[0], "exitCode": done.returncode},
            )
        return done.stdout

    def users(self) -> set[str]:
        out = self._ctl("list_users", "--no-table-headers")
        return {line.split("\t", 1)[0].strip() for line in out.splitlines() if line.strip()}

    def ensure_agent_user(self, namespace: str, host_uuid: str, vhost: str = "/") -> AgentCredentials:
        """Create (or re-key: a fresh password each deployment) the agent's user and set its
        permissions. Returns the credentials to write into the agent's config."""
        username = agent_username(namespace, host_uuid)
        password = secrets.token_urlsafe(24)
        if username in self.users():
            self._ctl("change_password", username, stdin=password + "\n")
        else:
            self._ctl("add_user", username, stdin=password + "\n")
        configure, write, read = agent_permissions(namespace, host_uuid)
        self._ctl("set_permissions", "-p", vhost, username, configure, write, read)
        exchange, topic_write, topic_read = agent_topic_permissions(namespace, host_uuid)
        self._ctl("set_topic_permissions", "-p", vhost, username, exchange, topic_write, topic_read)
        return AgentCredentials(username, password, vhost)

    def delete_agent_user(self, namespace: str, host_uuid: str) -> None:
        username = agent_username(namespace, host_uuid)
        if username in self.users():
            self._ctl("delete_user", username)

    def add_client_user(
        self, namespace: str, key_id: str, secret: str, account_uuid: str, is_admin: bool, vhost: str = "/"
    ) -> str:
        """Create access key ``key_id``'s user with ``secret`` as its password; returns its name."""
        username = Topology(namespace).client_username(key_id)
        self._ctl("add_user", username, stdin=secret + "\n")
        try:
            configure, write, read = client_permissions(namespace, key_id)
            self._ctl("set_permissions", "-p", vhost, username, configure, write, read)
            exchange, topic_write, topic_read = client_topic_permissions(namespace, account_uuid, is_admin)
            self._ctl("set_topic_permissions", "-p", vhost, username, exchange, topic_write, topic_read)
        except RingstackError:
            self._ctl("delete_user", username)
            raise
        return username

    def client_keys(self, namespace: str) -> set[str]:
        """The access key ids that have a broker user in ``namespace``."""
        topology = Topology(namespace)
        return {key for key in map(topology.client_key_of, self.users()) if key}

    def delete_client_user(self, namespace: str, key_id: str) -> bool:
        """Delete access key ``key_id``'s user (one rabbitmqctl run); False if there was none."""
        try:
            self._ctl("delete_user", Topology(namespace).client_username(key_id))
        except RingstackError as exc:
            if exc.details.get("exitCode") == NO_SUCH_USER_EXIT:
                return False
            raise
        return True

    async def ensure_agent_user_async(
        self, namespace: str, host_uuid: str, vhost: str = "/"
    ) -> AgentCredentials:
        return await asyncio.to_thread(self.ensure_agent_user, namespace, host_uuid, vhost)

    async def delete_agent_user_async(self, namespace: str, host_uuid: str) -> None:
        await asyncio.to_thread(self.delete_agent_user, namespace, host_uuid)
