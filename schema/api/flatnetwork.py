"""Between management nodes only: the Flat provider's per-host sync (see mgmt/services/flatnetwork)."""

from __future__ import annotations

from typing import ClassVar

from schema.api.base import ApiMessage, EmptyReply, Uuid


class SyncFlatNetworkOnHost(ApiMessage):
    """Make one host's flat DHCP servers match the database; routed to the host's owner."""

    service: ClassVar[str] = "flatnetwork"
    resource_field: ClassVar[str | None] = "host_uuid"
    internal: ClassVar[bool] = True
    reply = EmptyReply

    host_uuid: Uuid
