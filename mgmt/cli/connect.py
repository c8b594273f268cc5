"""Where the CLI's settings come from and how it reaches the cluster: the one place that builds
broker connections for ``ringstack`` (API calls, completion, event streams).

Settings: flag > ``RINGSTACK_*`` environment > ``~/.config/ringstack/client.toml`` > defaults.
The session: ``--session`` > ``RINGSTACK_SESSION`` > the file a login wrote > client.toml.
The broker credential: ``access_key_id`` and ``access_key_secret`` (``RINGSTACK_ACCESS_KEY_ID``,
``RINGSTACK_ACCESS_KEY_SECRET`` or client.toml; see ``CreateAccessKey``) replace the user and
password of ``broker_url``, whose default (guest) only serves the all-in-one's local bootstrap.
"""

from __future__ import annotations

import contextlib
import os
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bus.errors import RingstackError, Sys
from bus.topology import Topology

if TYPE_CHECKING:
    from bus.sync import SyncClient

CONFIG_PATH = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "ringstack" / "client.toml"
# Written by a successful login (LOGIN_APIS), removed by LogOut; used when no --session or
# RINGSTACK_SESSION is given (as zstack-cli keeps its session in ~/.zstack/cli).
SESSION_PATH = CONFIG_PATH.parent / "session"
DEFAULTS = {"broker_url": "amqp://guest:guest@127.0.0.1:5672/", "namespace": "ringstack", "timeout": "60"}


class SettingsError(ValueError):
    """A setting that cannot be used (a usage error: exit code 2)."""


def setting(name: str, flag: str | None = None) -> str:
    if flag is not None:
        return flag
    env = os.environ.get(f"RINGSTACK_{name.upper()}")
    if env:
        return env
    if CONFIG_PATH.exists():
        import tomllib

        try:
            value = tomllib.loads(CONFIG_PATH.read_text()).get(name)
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"{CONFIG_PATH} is not valid TOML: {exc}") from None
        if value is not None:
            return ",".join(map(str, value)) if isinstance(value, list) else str(value)
    return DEFAULTS.get(name, "")


def stored_session() -> str | None:
    try:
        return SESSION_PATH.read_text(encoding="ascii").strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def store_session(session: str) -> None:
    """Write the session file readable by its owner only (it is a bearer credential)."""
    SESSION_PATH.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = SESSION_PATH.with_name(f".session.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(session + "\n")
    os.chmod(tmp, 0o600)  # in case it already existed with a wider mode
    os.replace(tmp, SESSION_PATH)


def forget_session(session: str) -> None:
    """Remove the session file if it holds ``session`` (logging out another session keeps it)."""
    if stored_session() == session:
        SESSION_PATH.unlink(missing_ok=True)


@dataclass(frozen=True)
class Target:
    """Which cluster, as whom, and how long to wait for it."""

    broker_url: str
    namespace: str
    session: str | None
    timeout: float

    @classmethod
    def resolve(
        cls,
        broker_url: str | None = None,
        namespace: str | None = None,
        session: str | None = None,
        timeout: float | None = None,
    ) -> Target:
        try:
            wait = float(timeout if timeout is not None else setting("timeout"))
        except ValueError:
            raise SettingsError("timeout must be a number of seconds") from None
        if wait <= 0:
            raise SettingsError("timeout must be positive")
        chosen = session or os.environ.get("RINGSTACK_SESSION") or stored_session() or setting("session")
        url, ns = setting("broker_url", broker_url), setting("namespace", namespace)
        key_id, secret = setting("access_key_id"), setting("access_key_secret")
        if bool(key_id) != bool(secret):
            raise SettingsError("access_key_id and access_key_secret go together")
        if key_id:
            from bus.credentials import access_key_url

            url = access_key_url(url, ns, key_id, secret)
        return cls(url, ns, chosen or None, wait)

    @property
    def client_key(self) -> str | None:
        """The access key the broker URL carries, if any (then the CLI is a fenced client)."""
        import urllib.parse

        user = urllib.parse.unquote(urllib.parse.urlsplit(self.broker_url).username or "")
        return self.topology.client_key_of(user)

    @property
    def topology(self) -> Topology:
        return Topology(self.namespace)

    def client(self, process_name: str = "ringstack-cli") -> SyncClient:
        from bus.sync import SyncClient

        return SyncClient(
            self.broker_url, self.topology, default_timeout=self.timeout, process_name=process_name
        )

    def events(self, *patterns: str) -> EventStream:
        return EventStream(self, patterns)


class EventStream:
    """A private queue on the events exchange bound to topic ``patterns``; iterate with ``next``.

    Bound when entered, so a caller enters it *before* causing the events it waits for."""

    def __init__(self, target: Target, patterns: tuple[str, ...]) -> None:
        self.target = target
        self.patterns = patterns
        self._conn: Any = None
        self._got: deque[tuple[str, dict[str, Any]]] = deque()
        self._prefix = ""

    def __enter__(self) -> EventStream:
        import kombu

        from bus.envelope import new_uuid
        from bus.sync import _safe_url

        topology = self.target.topology
        key = self.target.client_key
        if key:
            # A fenced client reads its own account's events only (the key's account); their keys
            # are ``<account>.<kind>.<uuid>.<action>``, shown without the account.
            account = self._account()
            self._prefix = f"{account}."
            spec = topology.client_event_queue(key, f"cli-{new_uuid()}", account, *self.patterns)
        else:
            spec = topology.event_queue(f"cli-{new_uuid()}", *self.patterns)
        conn = kombu.Connection(
            self.target.broker_url, connect_timeout=min(5.0, self.target.timeout), heartbeat=0
        )
        try:
            conn.connect()
            channel = conn.channel()
            if not key:
                ex = topology.events_exchange
                channel.exchange_declare(ex.name, ex.type, durable=ex.durable, auto_delete=False)
            channel.queue_declare(spec.name, durable=False, exclusive=True, auto_delete=True)
            for exchange, key in spec.bindings:
                channel.queue_bind(queue=spec.name, exchange=exchange, routing_key=key)
            consumer = kombu.Consumer(
                channel, queues=[kombu.Queue(spec.name, channel=channel, no_declare=True)], no_ack=True
            )
            consumer.register_callback(self._on_message)
            consumer.consume()
        except (OSError, *conn.connection_errors, *conn.channel_errors) as exc:
            conn.release()
            raise RingstackError(
                Sys.UNAVAILABLE, f"cannot reach the broker at {_safe_url(self.target.broker_url)}: {exc}"
            ) from None
        self._conn = conn
        return self

    def _account(self) -> str:
        """The account of the target's access key (the events a fenced client may read)."""
        with self.target.client("ringstack-cli-events") as client:
            found = client.api(
                "QueryAccessKey",
                {"conditions": [{"name": "uuid", "op": "=", "value": self.target.client_key}]},
                session=self.target.session,
                timeout=self.target.timeout,
            )["inventories"]
        if not found:
            raise RingstackError(Sys.NOT_FOUND, "the access key is not visible to this session's account")
        return str(found[0]["ownerAccountUuid"])

    def __exit__(self, *_: object) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):  # closing a broken connection: nothing to save
                conn.release()

    def _on_message(self, body: Any, message: Any) -> None:
        import orjson

        try:
            env = orjson.loads(message.body)
        except orjson.JSONDecodeError:
            return
        if isinstance(env, dict):
            key = message.delivery_info.get("routing_key", "")
            self._got.append((key.removeprefix(self._prefix), env))

    def next(self, timeout: float) -> tuple[str, dict[str, Any]] | None:
        """The next (routing key, envelope) within ``timeout`` seconds, or None."""
        if not self._got:
            try:
                self._conn.drain_events(timeout=timeout)
            except TimeoutError:
                return None
            except (OSError, *self._conn.connection_errors) as exc:
                raise RingstackError(Sys.CONNECTION_LOST, f"the event stream broke: {exc}") from None
        return self._got.popleft() if self._got else None

    def __iter__(self) -> Iterator[tuple[str, dict[str, Any]]]:
        while True:
            got = self.next(1.0)
            if got is not None:
                yield got
