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
"""

from __future__ import annotations

import asyncio
import re
import secrets
import subprocess
import urllib.parse
from dataclasses import dataclass

from bus.errors import RingstackError, Sys


@dataclass(frozen=True)
class AgentCredentials:
    username: str
    password: str
    vhost: str

    def url(self, broker_url: str) -> str:
        """``broker_url`` (host and port as the agent reaches the broker) with these credentials."""
        parts = urllib.parse.urlsplit(broker_url)
        host = parts.hostname or "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        netloc = f"{urllib.parse.quote(self.username, safe='')}:{urllib.parse.quote(self.password, safe='')}@{host}"
        if parts.port:
            netloc += f":{parts.port}"
        vhost_path = "/" + urllib.parse.quote(self.vhost, safe="") if self.vhost != "/" else "/"
        return urllib.parse.urlunsplit((parts.scheme or "amqp", netloc, vhost_path, parts.query, ""))


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

    async def ensure_agent_user_async(
        self, namespace: str, host_uuid: str, vhost: str = "/"
    ) -> AgentCredentials:
        return await asyncio.to_thread(self.ensure_agent_user, namespace, host_uuid, vhost)

    async def delete_agent_user_async(self, namespace: str, host_uuid: str) -> None:
        await asyncio.to_thread(self.delete_agent_user, namespace, host_uuid)
