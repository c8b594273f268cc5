"""Calls between services about one resource, delivered on the resource's owner node.

``Router.call`` looks the owner up in this node's ring; the local node is short-cut through the
same dispatcher (no broker hop), others get the call on their node queue. A receiver that does not
own the resource under its own view answers ``SYS.NOT_OWNER``; the caller then re-reads the
membership and resends, a bounded number of times. The owner runs the call fenced, like a job.
"""

from __future__ import annotations

import time
from typing import Any

from bus.aio import AsyncBus
from bus.envelope import Envelope
from bus.errors import RingstackError, Sys
from mgmt.cluster.membership import Membership
from mgmt.cluster.ownership import Ownership
from mgmt.core.db import CURRENT_FENCE
from mgmt.core.dispatcher import Dispatcher
from mgmt.core.service import SYSTEM_ACCOUNT, Account


class Router:
    def __init__(
        self,
        *,
        node_uuid: str,
        bus: AsyncBus,
        dispatcher: Dispatcher,
        membership: Membership,
        ownership: Ownership,
        max_hops: int,
        lease_wait: float,
    ) -> None:
        self.node_uuid = node_uuid
        self.bus = bus
        self.dispatcher = dispatcher
        self.membership = membership
        self.ownership = ownership
        self.max_hops = max_hops
        self.lease_wait = lease_wait

    async def call(
        self, name: str, body: dict[str, Any], *, resource_uuid: str, timeout: float = 30.0
    ) -> dict[str, Any]:
        deadline = time.time() + timeout
        last: RingstackError | None = None
        for _ in range(self.max_hops + 1):
            ring = self.membership.ring
            owner = ring.owner(resource_uuid)
            env = Envelope(
                name=name,
                kind="call",
                body=body,
                resource_uuid=resource_uuid,
                ring_epoch=ring.epoch,
                deadline=deadline,
            )
            try:
                if owner == self.node_uuid:
                    return await self.serve(env)
                if owner is None:
                    raise RingstackError(Sys.UNAVAILABLE, "the management cluster has no members")
                reply = await self.bus.call_envelope(self.bus.topology.node_queue(owner).name, env)
                return reply.raise_for_error()
            except RingstackError as exc:
                last = exc
                if exc.code == Sys.NOT_OWNER:
                    await self.membership.refresh()
                elif exc.code == Sys.UNAVAILABLE and owner not in (None, self.node_uuid):
                    await self.membership.evict(owner, "a call to it was unroutable")
                else:
                    raise
        assert last is not None
        raise last

    async def serve(self, env: Envelope, account: Account = SYSTEM_ACCOUNT) -> dict[str, Any]:
        """Run a routed call here if this node owns its resource, fenced by the partition's token."""
        if env.resource_uuid is None:
            return await self.dispatcher.dispatch(env, account)
        if (env.ring_epoch or 0) > self.membership.ring.epoch:
            await self.membership.refresh()
        ring = self.membership.ring
        partition = ring.partition(env.resource_uuid)
        if ring.owner_of_partition(partition) != self.node_uuid:
            raise RingstackError(
                Sys.NOT_OWNER,
                f"node {self.node_uuid} does not own {env.resource_uuid} at ring epoch {ring.epoch}",
                details={"epoch": ring.epoch},
            )
        token = self.ownership.token(partition) or await self.ownership.wait_held(partition, self.lease_wait)
        if token is None:
            raise RingstackError(
                Sys.NOT_OWNER, f"node {self.node_uuid} does not hold partition {partition} yet"
            )
        reset = CURRENT_FENCE.set(self.ownership.fence(partition, token))
        try:
            return await self.dispatcher.dispatch(env, account)
        finally:
            CURRENT_FENCE.reset(reset)
