"""The one way work about a resource reaches its owner node and runs there.

Work about one resource (an API job, a call between services, an agent's report about a VM, a
host-tracking write) runs only on the node that owns the resource's ring partition, and there
always the same way:

1. route: the ring names the owner. A job is handed to it as a ``RunJob`` message
   (``mgmt.cluster.jobs``), a call on its node queue (``OwnerPath.call``); a node that does not
   own the resource under its own view refuses a call with ``SYS.NOT_OWNER`` and the caller
   re-reads the membership and resends, a bounded number of times;
2. wait for the lease: the ring may name this node a moment before it holds the partition;
3. set the fence: every transaction inside is fenced by the partition's token (``CURRENT_FENCE``),
   and the partition is not released while the work runs (``Ownership.in_flight``);
4. take the resource's serial lane when the handler is ``serial`` (``Dispatcher.in_lane``);
5. dispatch (``Dispatcher.invoke``).

Steps 2-5 are ``OwnerPath.run``; nothing else sets the fence.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

from bus.aio import AsyncBus
from bus.envelope import Envelope
from bus.errors import RingstackError, Sys
from mgmt.cluster.membership import Membership
from mgmt.cluster.ownership import Ownership
from mgmt.core.db import CURRENT_FENCE, Fence
from mgmt.core.dispatcher import Dispatcher
from mgmt.core.service import SYSTEM_ACCOUNT, Account, CallContext

T = TypeVar("T")


class OwnerPath:
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

    # ------------------------------------------------------------------ running on the owner

    async def run(
        self,
        resource_uuid: str,
        work: Callable[[Fence], Awaitable[T]],
        *,
        serial: bool,
        deadline: float | None = None,
    ) -> T:
        """Steps 2-5: wait for the lease of ``resource_uuid``'s partition, fence, take its serial
        lane if ``serial``, run ``work``. ``SYS.NOT_OWNER`` when this node does not hold it in time."""
        partition = self.membership.ring.partition(resource_uuid)
        fence = await self._lease(partition)
        reset = CURRENT_FENCE.set(fence)
        self.ownership.in_flight[partition] += 1
        try:
            key = resource_uuid if serial else None
            return await self.dispatcher.in_lane(key, lambda: work(fence), deadline=deadline)
        finally:
            self.ownership.in_flight[partition] -= 1
            CURRENT_FENCE.reset(reset)

    async def _lease(self, partition: int) -> Fence:
        token = self.ownership.token(partition)
        if token is None and self.membership.ring.owner_of_partition(partition) == self.node_uuid:
            token = await self.ownership.wait_held(partition, self.lease_wait)
        if token is None:
            raise RingstackError(Sys.NOT_OWNER, f"node {self.node_uuid} does not hold partition {partition}")
        return self.ownership.fence(partition, token)

    @contextlib.contextmanager
    def fenced_if_held(self, resource_uuid: str) -> Iterator[bool]:
        """Fence the writes about ``resource_uuid`` by its partition's token, without waiting: for
        periodic work each node does on what it holds now (host tracking). Yields False, and
        fences nothing, when this node does not hold the partition."""
        partition = self.membership.ring.partition(resource_uuid)
        token = self.ownership.token(partition)
        if token is None:
            yield False
            return
        reset = CURRENT_FENCE.set(self.ownership.fence(partition, token))
        try:
            yield True
        finally:
            CURRENT_FENCE.reset(reset)

    def owns(self, resource_uuid: str) -> bool:
        """Whether the ring, as this node sees it, names this node the owner of ``resource_uuid``."""
        return self.membership.ring.owner(resource_uuid) == self.node_uuid

    def holds(self, resource_uuid: str) -> bool:
        """Whether this node holds ``resource_uuid``'s partition now."""
        return self.ownership.token(self.membership.ring.partition(resource_uuid)) is not None

    # ------------------------------------------------------------------ calls

    async def call(
        self, name: str, body: dict[str, Any], *, resource_uuid: str, timeout: float = 30.0
    ) -> dict[str, Any]:
        """Step 1 for a call: run ``name`` on ``resource_uuid``'s owner (here, without a broker
        hop, when that is this node) and return its reply body."""
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
        """A call that reached this node: run it here if this node owns its resource."""
        route, msg = self.dispatcher.parse(env)
        ctx = CallContext(env, account)
        if env.resource_uuid is None:  # about no resource: no owner, no fence
            return await self.dispatcher.dispatch_parsed(route, msg, env, account)
        if (env.ring_epoch or 0) > self.membership.ring.epoch:
            await self.membership.refresh()
        ring = self.membership.ring
        if ring.owner(env.resource_uuid) != self.node_uuid:
            raise RingstackError(
                Sys.NOT_OWNER,
                f"node {self.node_uuid} does not own {env.resource_uuid} at ring epoch {ring.epoch}",
                details={"epoch": ring.epoch},
            )
        return await self.run(
            env.resource_uuid,
            lambda _fence: self.dispatcher.invoke(route, msg, ctx),
            serial=route.serial,
            deadline=env.deadline,
        )
