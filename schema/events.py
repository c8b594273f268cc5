"""Canonical events, documented: what ``ringstack events`` shows and subscribers bind to.

Every event is an envelope (``kind`` ``event``) on the ``<ns>.events`` topic exchange:

- routing key ``<kind>.<uuid>.<action>`` (bind ``zone.*.*``, ``*.<uuid>.*``, ``job.*.failed``);
- envelope ``name`` ``<kind>.<action>``;
- body ``Event``: ``resourceUuid``, ``resourceType`` (= kind), ``action`` and ``inventory`` (the
  resource as its Query API shows it, after the change; absent for deletions). Job events carry
  ``JobEventInventory`` instead.

API clients read events on ``<ns>.account-events`` instead, where the same events are keyed
``<owner account uuid>.<kind>.<uuid>.<action>`` and a client's broker user may bind only under its
own account (an admin's: any); resources without an owner are under the system account
``00000000000000000000000000000000``.

Events are published after the change is committed and are not a log: a subscriber that was away
resynchronises through the Query APIs. Agents' reports (``agent.<host>.<report>``) travel on the same
exchange but are internal, not resource events.
"""

from __future__ import annotations

from typing import Any

from schema.api.base import Event, WireModel

ROUTING_KEY = "<kind>.<uuid>.<action>"

ACTIONS: dict[str, str] = {
    "created": "the resource was created (inventory: the new resource)",
    "updated": "its name, description or other settings changed",
    "deleted": "it was deleted (no inventory); a cascade emits one per resource deleted",
    "state": "its administrative state changed (Enabled/Disabled, VM Running/Stopped/...)",
    "status": "its connection status changed (host Connected/Disconnected, image Ready, ...)",
    "attached": "it was attached to another resource (storage to a cluster or zone, a volume to a VM)",
    "detached": "it was detached from another resource",
    "destroyed": "a VM was destroyed (recoverable until expunged)",
    "recovered": "a destroyed VM or deleted image was recovered",
    "settled": "a VM left in a transitional state with no job acting on it was settled (SettleVmInstance or the owner's sweep): body has from and, when it still exists, the inventory",
    "expunged": "it was removed for good",
    "migrated": "a VM moved to another host (inventory.hostUuid)",
    "unchanged": "a request found the resource already as asked (idempotent repeat)",
    "dns_added": "an L3 network gained a DNS server",
    "dns_removed": "an L3 network lost a DNS server",
    "services_attached": "an L3 network gained network services",
    "services_detached": "an L3 network lost network services",
    "shared": "a resource was shared with accounts",
    "revoked": "a sharing was revoked",
    # job.<uuid>.<state>: the request's job (its uuid is the request's id)
    "running": "job: its work began on the resource's owner",
    "succeeded": "job: finished; its result went to the caller",
    "failed": "job: failed (inventory.error), everything it did rolled back",
    "cancelled": "job: cancelled (CancelJob) before or while it ran",
}

KINDS: dict[str, str] = {
    "zone": "zones",
    "cluster": "clusters",
    "host": "KVM and simulator hosts",
    "primaryStorage": "primary storage",
    "backupStorage": "backup storage",
    "image": "images",
    "instanceOffering": "instance offerings",
    "diskOffering": "disk offerings",
    "l2_network": "L2 networks",
    "l3_network": "L3 networks",
    "ip_range": "IP ranges",
    "vni_range": "VNI ranges of VXLAN pools",
    "security_group": "security groups (updated: rules, L3 networks)",
    "vm": "VM instances",
    "virtualRouterOffering": "virtual-router offerings",
    "vip": "virtual IPs on a public L3 (used by one EIP or port-forwarding service at a time)",
    "virtualRouterVm": "virtual-router appliances (status: Connected/Disconnected, as hosts)",
    "portForwardingRule": "port-forwarding rules (attached/detached: to a VM NIC)",
    "eip": "elastic IPs: a VIP mapped onto a VM NIC (attached/detached, state changes as updated)",
    "volume": "volumes",
    "account": "accounts",
    "quota": "quotas",
    "session": "login sessions (deleted when they end)",
    "ldapServer": "LDAP servers",
    "ldapBinding": "LDAP bindings",
    "access_key": "access keys: API clients' broker credentials (never with their secret)",
    "job": "jobs: every mutating request about a resource",
}


class JobEventInventory(WireModel):
    """The ``inventory`` of a ``job.<uuid>.<state>`` event."""

    name: str
    resource_uuid: str
    state: str
    error: dict[str, Any] | None = None


def events_schema() -> dict[str, Any]:
    """The events' documentation and JSON Schema, as ``ringstack-ctl schema export`` writes it."""
    return {
        "exchange": "<namespace>.events (topic)",
        "routingKey": ROUTING_KEY,
        "clientExchange": "<namespace>.account-events (topic)",
        "clientRoutingKey": f"<account uuid>.{ROUTING_KEY}",
        "name": "<kind>.<action>",
        "kinds": KINDS,
        "actions": ACTIONS,
        "body": Event.model_json_schema(by_alias=True),
        "jobInventory": JobEventInventory.model_json_schema(by_alias=True),
    }
