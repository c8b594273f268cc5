"""Durable jobs: how an accepted request survives the death of the node running it.

Every mutating API request about a resource becomes a ``job`` row *before* any work starts, in the
gateway node's transaction, and only then is the request acked to the broker. From there:

- the gateway routes the job to the owner of the resource's partition (itself, or a ``RunJob``
  message to the owner's node queue);
- the owner runs it the way all work about a resource runs there (``mgmt.cluster.owner``): under
  the partition's fencing token, in the resource's serial lane when its handler is ``serial``. The
  job is claimed (``running``) and finished (``succeeded``/``failed``/``cancelled``) in fenced
  transactions, and so is every transaction of the handler itself;
- the owner replies to the client's ``reply_to`` with the job id as correlation id, and publishes
  ``job.<uuid>.<state>`` on the events exchange (for clients whose deadline passed meanwhile);
- a node that takes over a partition (its holder died or left) resumes every job there that is
  ``pending`` or was ``running``: it runs it again with ``CallContext.resumed`` set (handlers are
  idempotent for that), and re-sends the reply of a finished job whose reply may have been lost.
  Clients drop a second reply to the same request, so each caller sees exactly one answer;
- a sweeper picks up pending jobs whose ``RunJob`` message was lost (sent to a node that died).

A pending job can be cancelled; a running one only if its handler declares itself cancellable.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Coroutine, Iterable
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from bus.aio import NO_REPLY, AsyncBus, HandlerResult
from bus.envelope import Envelope, new_uuid
from bus.errors import RingstackError, Sys
from mgmt.cluster.membership import Membership
from mgmt.cluster.owner import OwnerPath
from mgmt.cluster.ownership import Ownership
from mgmt.config import NodeConfig
from mgmt.core.db import Database, Fence, arm_fence, ownership_lost
from mgmt.core.dispatcher import Dispatcher, Route, validate
from mgmt.core.events import EventPublisher
from mgmt.core.service import SYSTEM_ACCOUNT, Account, CallContext
from schema.api.base import ApiMessage, CreateMessage

log = logging.getLogger(__name__)

RUN_JOB = "ringstack.RunJob"
CANCEL_RUNNING_JOB = "ringstack.CancelRunningJob"
TERMINAL = ("succeeded", "failed", "cancelled")
ROLLBACK_GRACE = 120.0  # seconds a job may run past its deadline, to roll back what it did


def account_to_wire(account: Account) -> dict[str, Any]:
    return {"uuid": account.uuid, "name": account.name, "isAdmin": account.is_admin}


def account_from_wire(wire: dict[str, Any]) -> Account:
    return Account(uuid=wire["uuid"], name=wire["name"], is_admin=bool(wire["isAdmin"]))


# ---------------------------------------------------------------------- transactions


def _insert(session: Session, row: dict[str, Any]) -> bool:
    inserted = session.execute(
        text(
            """
            INSERT INTO job (uuid, name, resource_uuid, partition, state, body, owner_account_uuid, account,
                             reply_to, deadline, attempts, replied, cancel_requested)
            VALUES (:uuid, :name, :resource_uuid, :partition, 'pending', CAST(:body AS jsonb), :owner,
                    CAST(:account AS jsonb), :reply_to, :deadline, 0, false, false)
            ON CONFLICT (uuid) DO NOTHING RETURNING 1
            """
        ),
        row,
    ).first()
    return inserted is not None


_CLAIM = text(
    "UPDATE job SET state = 'running', node_uuid = :n, attempts = attempts + 1, "
    "started_at = coalesce(started_at, now()) "
    "WHERE uuid = :u AND (state = 'running' OR (state = 'pending' AND NOT cancel_requested)) "
    "RETURNING name, resource_uuid, state, body, account, reply_to, deadline, attempts - 1 AS attempts, "
    "result, error, cancel_requested"
)


def _claim(session: Session, job_uuid: str, fence: Fence) -> dict[str, Any] | None:
    arm_fence(session, fence)
    # The common case in one statement: a job to run (pending, or running on a node that died).
    claimed = session.execute(_CLAIM, {"u": job_uuid, "n": fence.node_uuid}).mappings().first()
    if claimed is not None:
        return dict(claimed)
    row = (
        session.execute(
            text(
                "SELECT name, resource_uuid, state, body, account, reply_to, deadline, attempts, result, error, "
                "cancel_requested FROM job WHERE uuid = :u FOR UPDATE"
            ),
            {"u": job_uuid},
        )
        .mappings()
        .first()
    )
    if row is None:
        return None
    job = dict(row)
    if job["state"] in TERMINAL:
        return job
    if job["state"] == "pending" and job["cancel_requested"]:
        job["state"] = "cancelled"
        job["error"] = RingstackError(Sys.CANCELLED, "the job was cancelled before it started").to_wire()
        session.execute(
            text(
                "UPDATE job SET state = 'cancelled', error = CAST(:e AS jsonb), finished_at = now() WHERE uuid = :u"
            ),
            {"u": job_uuid, "e": _json(job["error"])},
        )
        return job
    session.execute(
        text(
            "UPDATE job SET state = 'running', node_uuid = :n, attempts = attempts + 1, "
            "started_at = coalesce(started_at, now()) WHERE uuid = :u"
        ),
        {"u": job_uuid, "n": fence.node_uuid},
    )
    job["state"] = "running"
    return job


def _finish(
    session: Session,
    job_uuid: str,
    fence: Fence,
    state: str,
    result: dict[str, Any] | None,
    error: dict[str, Any] | None,
    scrubbed_body: dict[str, Any] | None,
) -> bool:
    arm_fence(session, fence)
    done = session.execute(
        text(
            "UPDATE job SET state = :s, result = CAST(:r AS jsonb), error = CAST(:e AS jsonb), finished_at = now(), "
            "body = coalesce(CAST(:b AS jsonb), body) WHERE uuid = :u AND state = 'running' AND node_uuid = :n RETURNING 1"
        ),
        {
            "u": job_uuid,
            "n": fence.node_uuid,
            "s": state,
            "r": _json(result),
            "e": _json(error),
            "b": _json(scrubbed_body),
        },
    ).first()
    return done is not None


@functools.cache
def _secret_fields(message: type[ApiMessage]) -> frozenset[str]:
    # Cached: every finished job asks, and rendering each field's annotation is not cheap.
    return frozenset(
        info.alias or name
        for name, info in message.model_fields.items()
        if "SecretStr" in str(info.annotation) or "password" in name or name.endswith("_key")
    )


def scrub_secrets(message: type[ApiMessage], body: dict[str, Any]) -> dict[str, Any] | None:
    """The body with its secret fields (passwords, keys) masked, or None when it has none. A job
    needs its body to be run again after a crash, but not once it has finished."""
    secret = _secret_fields(message)
    if not secret & body.keys():
        return None
    return {k: ("******" if k in secret else v) for k, v in body.items()}


def _resumable(
    session: Session, partitions: list[int], node_uuid: str, stale_only: bool
) -> list[tuple[str, str, str, int]]:
    if stale_only:
        # The sweeper: pending jobs whose RunJob message may have been lost, and running ones that
        # no task of ours runs (the caller skips those it does run): in a partition we hold, no
        # other node can be running anything, so such a job was orphaned (e.g. by self-fencing).
        sql = (
            "SELECT uuid, name, resource_uuid, partition FROM job WHERE partition = ANY(:p) AND "
            "((state = 'pending' AND created_at < now() - interval '2 seconds') OR state = 'running') "
            "ORDER BY created_at LIMIT 500"
        )
    else:  # a takeover: everything unfinished, and finished jobs whose reply may be lost
        sql = (
            "SELECT uuid, name, resource_uuid, partition FROM job WHERE partition = ANY(:p) AND "
            "(state IN ('pending', 'running') OR (NOT replied AND finished_at > now() - interval '10 minutes')) "
            "ORDER BY created_at"
        )
    rows = session.execute(text(sql), {"p": partitions, "n": node_uuid}).all()
    return [(str(u), str(n), str(r), int(p)) for u, n, r, p in rows]


def _mark_replied(session: Session, job_uuids: list[str]) -> None:
    session.execute(text("UPDATE job SET replied = true WHERE uuid = ANY(:u)"), {"u": job_uuids})


def _request_cancel(session: Session, job_uuid: str, account: Account) -> dict[str, Any]:
    row = (
        session.execute(
            text(
                "SELECT name, state, node_uuid, reply_to, owner_account_uuid FROM job WHERE uuid = :u FOR UPDATE"
            ),
            {"u": job_uuid},
        )
        .mappings()
        .first()
    )
    if row is None or (not account.is_admin and row["owner_account_uuid"] != account.uuid):
        raise RingstackError(Sys.NOT_FOUND, f"job {job_uuid} not found", details={"uuid": job_uuid})
    job = dict(row)
    if job["state"] in TERMINAL:
        raise RingstackError(Sys.CONFLICT, f"job {job_uuid} already finished ({job['state']})")
    if job["state"] == "pending":
        session.execute(
            text(
                "UPDATE job SET state = 'cancelled', error = CAST(:e AS jsonb), finished_at = now() WHERE uuid = :u"
            ),
            {"u": job_uuid, "e": _json(_cancelled().to_wire())},
        )
        job["state"] = "cancelled"
    else:
        session.execute(text("UPDATE job SET cancel_requested = true WHERE uuid = :u"), {"u": job_uuid})
    return job


def _json(value: Any) -> str | None:
    import orjson

    return None if value is None else orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


def _cancelled() -> RingstackError:
    return RingstackError(Sys.CANCELLED, "the job was cancelled")


# ---------------------------------------------------------------------- the runner


class JobRunner:
    def __init__(
        self,
        *,
        node_uuid: str,
        config: NodeConfig,
        db: Database,
        bus: AsyncBus,
        dispatcher: Dispatcher,
        owners: OwnerPath,
        ownership: Ownership,
        membership: Membership,
        events: EventPublisher,
    ) -> None:
        self.node_uuid = node_uuid
        self.config = config
        self.db = db
        self.bus = bus
        self.dispatcher = dispatcher
        self.owners = owners
        self.ownership = ownership
        self.membership = membership
        self.events = events
        self._scheduled: dict[str, asyncio.Task[None]] = {}  # job uuid -> its task (queued or running)
        self._active: dict[str, asyncio.Task[Any]] = {}  # past the point where a drain waits for them
        self._running: dict[str, asyncio.Task[Any]] = {}
        self._running_routes: dict[str, Route] = {}
        self._cancelling: set[str] = set()
        self._replied: list[str] = []
        self._stopping = False
        # The cluster loop's bookkeeping (takeover, sweep, reply flags) runs in tasks of its own.
        # Its transactions queue for the request pool's threads like any other, and under a burst
        # of requests that takes many seconds. The cluster loop must not wait that long: its ticks
        # are what tell the lease keeper that the event loop is alive, so a tick held up behind
        # the queue let the lease lapse and fenced a healthy node, cancelling every job it ran.
        self._housekeeping: set[asyncio.Task[None]] = set()
        self._sweeping: asyncio.Task[None] | None = None
        self._flushing: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ accepting

    async def accept(self, env: Envelope, route: Route, msg: ApiMessage, account: Account) -> HandlerResult:
        """Record a mutating request as a job, then route it to its owner. The caller acks the
        request to the broker only after this returns, so an accepted request is never lost."""
        target = msg.target_uuid()
        body = dict(env.body)
        if target is None and isinstance(msg, CreateMessage):
            target = new_uuid()
            body["resourceUuid"] = target
        assert target is not None
        await self._record(env.id, env.name, body, target, account, env.reply_to, env.deadline)
        return NO_REPLY

    async def submit(
        self, name: str, body: dict[str, Any], resource_uuid: str, account: Account = SYSTEM_ACCOUNT
    ) -> str:
        """Work the cluster asks for itself (settling a stuck resource): a job like any other, with
        nobody waiting for its reply. Returns the job's uuid."""
        job_uuid = new_uuid()
        deadline = time.time() + self.config.job_timeout
        await self._record(job_uuid, name, body, resource_uuid, account, None, deadline)
        return job_uuid

    async def _record(
        self,
        job_uuid: str,
        name: str,
        body: dict[str, Any],
        resource_uuid: str,
        account: Account,
        reply_to: str | None,
        deadline: float | None,
    ) -> None:
        partition = self.membership.ring.partition(resource_uuid)
        await self.db.run_unfenced(
            _insert,
            {
                "uuid": job_uuid,
                "name": name,
                "resource_uuid": resource_uuid,
                "partition": partition,
                "body": _json(body),
                "owner": account.uuid,
                "account": _json(account_to_wire(account)),
                "reply_to": reply_to,
                "deadline": deadline,
            },
        )
        await self.route(job_uuid, name, resource_uuid, partition)

    async def route(
        self, job_uuid: str, name: str, resource_uuid: str, partition: int, hops: int = 0
    ) -> None:
        """Run the job here if this node owns its partition, else hand it to the owner."""
        for _ in range(3):
            owner = self.membership.ring.owner_of_partition(partition)
            if owner is None or owner == self.node_uuid:
                self.schedule(job_uuid, name, resource_uuid, partition)
                return
            if hops >= self.config.max_forward_hops:
                log.info("job %s: %d hops, leaving it to the sweeper", job_uuid, hops)
                return
            env = Envelope(
                name=RUN_JOB,
                kind="call",
                body={"job": job_uuid, "name": name, "partition": partition},
                resource_uuid=resource_uuid,
                ring_epoch=self.membership.ring.epoch,
                hops=hops + 1,
                deadline=time.time() + self.config.default_call_timeout,
            )
            try:
                await self.bus.send(self.bus.topology.node_queue(owner).name, env)
                return
            except RingstackError as exc:
                if exc.code != Sys.UNAVAILABLE:
                    raise
                # The owner's queue is gone: its connection died. Evict it and route again.
                await self.membership.evict(owner, "a job sent to it was unroutable")
        log.warning("job %s: could not route; the sweeper will pick it up", job_uuid)

    async def on_run_job(self, env: Envelope) -> None:
        job_uuid, name, partition = env.body.get("job"), env.body.get("name"), env.body.get("partition")
        if not isinstance(job_uuid, str) or not isinstance(partition, int) or env.resource_uuid is None:
            raise RingstackError(Sys.INVALID_ARGUMENT, "RunJob needs job, partition and resource_uuid")
        if (env.ring_epoch or 0) > self.membership.ring.epoch:
            await self.membership.refresh()
        # A node of the previous release sends no name: the job then runs in its lane, as it did.
        await self.route(
            job_uuid, name if isinstance(name, str) else "", env.resource_uuid, partition, env.hops
        )

    # ------------------------------------------------------------------ running

    def schedule(self, job_uuid: str, name: str, resource_uuid: str, partition: int) -> None:
        if job_uuid in self._scheduled or self._stopping:
            return
        task = asyncio.create_task(
            self._run(job_uuid, name, resource_uuid, partition), name=f"job-{job_uuid[:8]}"
        )
        self._scheduled[job_uuid] = task
        task.add_done_callback(lambda _: self._scheduled.pop(job_uuid, None))

    async def _run(self, job_uuid: str, name: str, resource_uuid: str, partition: int) -> None:
        # A job whose message no service here handles fails at dispatch; until then, a lane.
        serial = self.dispatcher.route(name).serial if self.dispatcher.handles(name) else True
        try:
            await self.owners.run(
                resource_uuid, lambda fence: self._execute(job_uuid, resource_uuid, fence), serial=serial
            )
        except RingstackError as exc:
            if (
                exc.code == Sys.NOT_OWNER
                and self.membership.ring.owner_of_partition(partition) != self.node_uuid
            ):
                await self.route(job_uuid, name, resource_uuid, partition, hops=1)
            else:  # not ours yet (the takeover or the holder's sweeper runs it), or a full lane
                log.warning("job %s not run now (%s); it stays pending", job_uuid, exc.code)
        except asyncio.CancelledError:
            pass  # stopping or fenced: the job stays in the database for the next owner
        except Exception:
            log.exception(
                "job %s: unexpected failure in the runner; it stays in the database for a retry", job_uuid
            )

    async def _execute(self, job_uuid: str, resource_uuid: str, fence: Fence) -> None:
        if self._stopping:
            return
        # Registered in the same step as the check above, so a drain either sees this job as
        # active (and waits for it) or this job sees the drain (and leaves the job pending).
        self._active[job_uuid] = asyncio.current_task()  # type: ignore[assignment]
        try:
            await self._claim_and_run(job_uuid, resource_uuid, fence)
        finally:
            self._active.pop(job_uuid, None)

    async def _claim_and_run(self, job_uuid: str, resource_uuid: str, fence: Fence) -> None:
        try:
            job = await self.db.run_unfenced(_claim, job_uuid, fence)
        except RingstackError as exc:
            if exc.code == Sys.NOT_OWNER:
                return
            raise
        if job is None:
            log.warning("job %s vanished", job_uuid)
            return
        if job["state"] in TERMINAL:
            await self._reply(job_uuid, job["name"], job["reply_to"], job["result"], job["error"])
            if job["state"] == "cancelled":
                await self._event(job_uuid, job["name"], resource_uuid, "cancelled")
            return
        # Clients show it (the CLI's progress line): the job left the queue and its work began.
        await self._event(job_uuid, job["name"], resource_uuid, "running")
        state, result, error = await self._dispatch(job_uuid, job, resource_uuid)
        if state is None:
            return  # ownership lost mid-way: the next owner runs it again
        route = self.dispatcher.route(job["name"]) if self.dispatcher.handles(job["name"]) else None
        scrubbed = scrub_secrets(route.message, job["body"]) if route else None
        try:
            finished = await self.db.run_unfenced(_finish, job_uuid, fence, state, result, error, scrubbed)
        except RingstackError as exc:
            if exc.code == Sys.NOT_OWNER:
                return
            raise
        if finished:
            await self._reply(job_uuid, job["name"], job["reply_to"], result, error)
            await self._event(job_uuid, job["name"], resource_uuid, state, error)

    async def _dispatch(
        self, job_uuid: str, job: dict[str, Any], resource_uuid: str
    ) -> tuple[str | None, dict[str, Any] | None, dict[str, Any] | None]:
        self._running[job_uuid] = asyncio.current_task()  # type: ignore[assignment]
        deadline = job["deadline"] if job["deadline"] and job["deadline"] > time.time() else None
        env = Envelope(
            name=job["name"],
            kind="api",
            body=job["body"],
            id=job_uuid,
            resource_uuid=resource_uuid,
            deadline=deadline or time.time() + self.config.job_timeout,
        )
        try:
            route = self.dispatcher.route(job["name"])
            self._running_routes[job_uuid] = route
            msg = validate(route.message, job["body"], stored=True)
            ctx = CallContext(env, account_from_wire(job["account"]), resumed=job["attempts"] > 0)
            # Never unbounded: past its deadline (plus time to roll back) a job fails rather than
            # staying 'running' for ever.
            budget = (env.remaining() or 0.0) + ROLLBACK_GRACE
            async with asyncio.timeout(budget):
                return "succeeded", await self.dispatcher.invoke(route, msg, ctx), None
        except RingstackError as exc:
            if exc.code == Sys.NOT_OWNER or ownership_lost(exc):
                # Not a failure to record: the handler stopped (and left its undo) because this
                # node lost the partition. The job stays 'running' for whoever holds it next (this
                # node again after it re-takes it: the sweeper finds running jobs no task runs).
                log.warning("job %s (%s): ownership lost; left for the next owner", job_uuid, job["name"])
                return None, None, None
            return "failed", None, exc.to_wire()
        except TimeoutError:
            log.error("job %s (%s) overran its deadline and was stopped", job_uuid, job["name"])
            error = RingstackError(
                Sys.TIMEOUT, f"{job['name']} did not finish in time; request id {job_uuid}"
            )
            return "failed", None, error.to_wire()
        except asyncio.CancelledError:
            if job_uuid in self._cancelling:
                return "cancelled", None, _cancelled().to_wire()
            raise
        except Exception:
            log.exception("job %s (%s) failed", job_uuid, job["name"])
            error = RingstackError(
                Sys.INTERNAL, f"internal error handling {job['name']}; request id {job_uuid}"
            )
            return "failed", None, error.to_wire()
        finally:
            self._running.pop(job_uuid, None)
            self._running_routes.pop(job_uuid, None)
            self._cancelling.discard(job_uuid)

    async def _reply(
        self,
        job_uuid: str,
        name: str,
        reply_to: str | None,
        result: dict[str, Any] | None,
        error: dict[str, Any] | None,
    ) -> None:
        if reply_to:
            await self.bus.reply(
                reply_to,
                Envelope(name=name, kind="reply", body=result or {}, correlation_id=job_uuid, error=error),
            )
        self._replied.append(job_uuid)

    async def _event(
        self, job_uuid: str, name: str, resource_uuid: str, state: str, error: dict[str, Any] | None = None
    ) -> None:
        await self.events.resource_event(
            "job",
            job_uuid,
            state,
            {"name": name, "resourceUuid": resource_uuid, "state": state, "error": error},
        )

    # ------------------------------------------------------------------ takeover, sweeping

    def _background(self, what: str, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        async def logged() -> None:
            try:
                await work
            except Exception:
                # The sweeper still finds the jobs a failed takeover or sweep left behind.
                log.exception("jobs: %s failed", what)

        task = asyncio.create_task(logged(), name=f"jobs-{what}")
        self._housekeeping.add(task)
        task.add_done_callback(self._housekeeping.discard)
        return task

    async def takeover(self, partitions: Iterable[int]) -> None:
        """Resume the unfinished jobs of partitions just acquired (in the background)."""
        held = sorted(partitions)
        if held:
            self._background("takeover", self._takeover(held))

    async def _takeover(self, held: list[int]) -> None:
        for job_uuid, name, resource_uuid, partition in await self.db.run_unfenced(
            _resumable, held, self.node_uuid, False
        ):
            self.schedule(job_uuid, name, resource_uuid, partition)

    async def sweep(self) -> None:
        """Pick up orphaned jobs (in the background; one sweep at a time)."""
        if self._sweeping is None or self._sweeping.done():
            self._sweeping = self._background("sweep", self._sweep())

    async def _sweep(self) -> None:
        held = sorted(self.ownership.held)
        if not held:
            return
        for job_uuid, name, resource_uuid, partition in await self.db.run_unfenced(
            _resumable, held, self.node_uuid, True
        ):
            if job_uuid not in self._scheduled:
                self.schedule(job_uuid, name, resource_uuid, partition)

    async def flush_replied(self) -> None:
        """Record which jobs were replied to (in the background; one batch at a time)."""
        if self._replied and (self._flushing is None or self._flushing.done()):
            self._flushing = self._background("flush", self._flush())

    async def _flush(self) -> None:
        batch, self._replied = self._replied, []
        if not batch:
            return
        try:
            await self.db.run_unfenced(_mark_replied, batch)
        except BaseException:
            self._replied.extend(batch)  # the next flush retries them; marking twice is harmless
            raise

    async def fenced(self, partitions: frozenset[int]) -> None:
        """Our lease is gone: stop every job (their rows stay, for the next owner)."""
        for task in list(self._scheduled.values()):
            task.cancel()

    # ------------------------------------------------------------------ cancelling

    async def cancel(self, job_uuid: str, account: Account) -> str:
        job = await self.db.run_unfenced(_request_cancel, job_uuid, account)
        if job["state"] == "cancelled":
            await self._reply(job_uuid, job["name"], job["reply_to"], None, _cancelled().to_wire())
            await self._event(job_uuid, job["name"], "", "cancelled")
            return "cancelled"
        owner = job["node_uuid"]
        if owner == self.node_uuid or owner is None:
            return self.cancel_running(job_uuid)
        reply = await self.bus.call(
            self.bus.topology.node_queue(owner).name, CANCEL_RUNNING_JOB, {"job": job_uuid}, timeout=10
        )
        return str(reply["state"])

    def cancel_running(self, job_uuid: str) -> str:
        task = self._running.get(job_uuid)
        route = self._running_routes.get(job_uuid)
        if task is None or route is None:
            raise RingstackError(Sys.CONFLICT, f"job {job_uuid} is not running on this node")
        if not route.cancellable:
            raise RingstackError(
                Sys.CONFLICT, f"job {job_uuid} is running and {route.message.__name__} cannot be cancelled"
            )
        self._cancelling.add(job_uuid)
        task.cancel()
        return "cancelling"

    # ------------------------------------------------------------------ stopping, status

    async def drain(self, timeout: float) -> bool:
        """Start nothing new, let running jobs finish; queued ones stay pending for the next owner."""
        self._stopping = True
        active = set(self._active.values())
        if active:
            _, pending = await asyncio.wait(active, timeout=timeout)
        else:
            pending = set()
        queued = list(self._scheduled.values())
        for task in queued:
            task.cancel()
        if queued:  # let them unwind before the node closes what they use
            await asyncio.wait(queued, timeout=5)
        housekeeping = list(self._housekeeping)
        for task in housekeeping:
            task.cancel()
        if housekeeping:
            await asyncio.wait(housekeeping, timeout=5)
        await self._flush()
        return not pending

    def status(self) -> dict[str, Any]:
        return {"scheduledJobs": len(self._scheduled), "runningJobs": len(self._running)}
