"""Broker URLs with credentials, and how an API client's access key becomes one.

An access key (``CreateAccessKey``, see mgmt/services/accesskey) is a broker user of its own:
``<ns>.key.<accessKeyId>`` with the key's secret as its password. ``access_key_url`` puts those
into the broker URL (host, port and vhost kept); ``SyncClient`` and ``AsyncBus`` recognise the
user by its name and behave as a fenced client (see their docstrings).
"""

from __future__ import annotations

import urllib.parse

from bus.topology import Topology


def url_with_credentials(broker_url: str, username: str, password: str, vhost: str | None = None) -> str:
    """``broker_url`` (scheme, host, port, query; its vhost unless one is given) with these credentials."""
    parts = urllib.parse.urlsplit(broker_url)
    host = parts.hostname or "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{urllib.parse.quote(username, safe='')}:{urllib.parse.quote(password, safe='')}@{host}"
    if parts.port:
        netloc += f":{parts.port}"
    path = parts.path or "/"
    if vhost is not None:
        path = "/" + urllib.parse.quote(vhost, safe="") if vhost != "/" else "/"
    return urllib.parse.urlunsplit((parts.scheme or "amqp", netloc, path, parts.query, ""))


def login_of(broker_url: str) -> str:
    """The user a broker URL logs in as: its user name, else ``guest`` (aiormq's and kombu's
    default). Requests carry it as their ``user_id`` (see ``Topology.may_answer``)."""
    return urllib.parse.unquote(urllib.parse.urlsplit(broker_url).username or "") or "guest"


def access_key_url(broker_url: str, namespace: str, key_id: str, secret: str) -> str:
    """The broker URL an API client uses with its access key."""
    return url_with_credentials(broker_url, Topology(namespace).client_username(key_id), secret)
