"""The management node process: one asyncio loop holding every service.

Start-up: connect to the broker and the database, build the services (found through the
``ringstack.services`` entry points plus ``extra_services``), then consume the shared API queue
and this node's own queue. SIGTERM/SIGINT: stop taking work, let in-flight requests finish within
``drain_timeout``, close, exit 0.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import pkgutil
import signal
import time
from importlib.metadata import entry_points
from typing import Any

from bus.aio import AsyncBus, Consumer, HandlerResult
from bus.envelope import Envelope, new_uuid
from bus.errors import RingstackError, Sys
from bus.topology import Topology
from mgmt.cluster import RingRuntime
from mgmt.config import NodeConfig
from mgmt.core.agents import AgentClient
from mgmt.core.auth import AuthSlot, AuthStrategy
from mgmt.core.cascade import CascadeRegistry
from mgmt.core.db import Database
from mgmt.core.dispatcher import Dispatcher, validate
from mgmt.core.events import EventPublisher
from mgmt.core.extensions import ExtensionRegistry
from mgmt.core.garbage import GarbageCollector
from mgmt.core.owners import OwnerIndex
from mgmt.core.serial import SerialQueues
from mgmt.core.service import ANONYMOUS, Service
from mgmt.ops import NodeOps
from schema.api.base import CreateMessage
from schema.registry import load_all

log = logging.getLogger(__name__)

SERVICE_ENTRY_POINTS = "ringstack.services"


def builtin_services() -> dict[str, type[Service]]:
    """Every Service class exported (``__all__``) by a package under ``mgmt/services``."""
    import mgmt.services

    found: dict[str, type[Service]] = {}
    for module in pkgutil.iter_modules(mgmt.services.__path__):
        package = importlib.import_module(f"mgmt.services.{module.name}")
        for attr in getattr(package, "__all__", ()):
            cls = getattr(package, attr)
            if isinstance(cls, type) and issubclass(cls, Service):
                found[cls.name] = cls
    return found


def service_classes(config: NodeConfig) -> list[type[Service]]:
    """Built-in services, plugins from the ``ringstack.services`` entry points, and
    ``extra_services``; minus ``disabled_services``."""
    found = builtin_services()
    for ep in entry_points(group=SERVICE_ENTRY_POINTS):
        cls = ep.load()
        found[cls.name] = cls
    for ref in config.extra_services:
        module, _, attr = ref.partition(":")
        cls = getattr(importlib.import_module(module), attr)
        found[cls.name] = cls
    return [cls for name, cls in sorted(found.items()) if name not in config.disabled_services]


class ManagementNode:
    def __init__(self, config: NodeConfig, *, auth: AuthStrategy | None = None) -> None:
        load_all()
        self.config = config
        self.uuid = config.node_uuid or new_uuid()
        self.topology = Topology(config.namespace)
        self._reply_prefix = f"{config.namespace}.reply."
        self.bus = AsyncBus(
            config.broker_url,
            self.topology,
            process_name=f"ringstack-node-{self.uuid[:8]}",
            default_timeout=config.default_call_timeout,
            max_message_bytes=config.max_message_bytes,
        )
        self.db = Database(config.database_url, pool_size=config.db_pool_size)
        self.serial = SerialQueues(config.serial_queue_limit)
        self.dispatcher = Dispatcher(self.serial)
        self.events = EventPublisher(self.bus, OwnerIndex(self.db))
        self.cascade = CascadeRegistry()
        self.extensions = ExtensionRegistry()
        self.agents = AgentClient(self.bus, default_timeout=config.agent_timeout)
        self.garbage = GarbageCollector(self.db, self.agents)
        self.cluster = RingRuntime(self)
        self.auth_slot = AuthSlot(auth)
        self.services: list[Service] = []
        self._api_consumer: Consumer | None = None
        self._node_consumer: Consumer | None = None
        self._stopping = False
        self._started_cluster = False
        self._stopped = asyncio.Event()
        self.ops = NodeOps(self)  # health, readiness, metrics, drain (mgmt/ops.py)

    def _dependencies(self) -> dict[str, Any]:
        return {
            "db": self.db,
            "events": self.events,
            "bus": self.bus,
            "config": self.config,
            "node_uuid": self.uuid,
            "serial": self.serial,
            "cascade": self.cascade,
            "extensions": self.extensions,
            "agents": self.agents,
            "garbage": self.garbage,
            "owners": self.cluster.owners,
            "jobs": self.cluster.jobs,
            "stuck": self.cluster.stuck,
            "auth_slot": self.auth_slot,
        }

    @property
    def auth(self) -> AuthStrategy:
        """The strategy the gateway authenticates with (installed by the identity service)."""
        return self.auth_slot.strategy

    def _build_services(self) -> None:
        provided = self._dependencies()
        for cls in service_classes(self.config):
            missing = cls.dependencies.keys() - provided.keys()
            if missing:
                raise RuntimeError(f"service {cls.name} needs {sorted(missing)}, which no node provides")
            service = cls(**{name: provided[name] for name in cls.dependencies})
            self.dispatcher.add_service(service)
            self.services.append(service)

    async def start(self) -> None:
        self._build_services()
        await self.bus.start()
        for service in self.services:
            await service.start()
        await self.bus.declare_queue(self.topology.dead_letter_queue)
        # Our own queue first (peers route to us as soon as we join), then join, then take API work.
        self._node_consumer = self.bus.consume(
            self.topology.node_queue(self.uuid), self._on_call, prefetch=self.config.node_prefetch
        )
        await self.bus.start_consumer(self._node_consumer)
        await self.cluster.start()
        self._started_cluster = True
        self._api_consumer = self.bus.consume(
            self.topology.api_queue, self.ops.timed_api(self._on_api), prefetch=self.config.api_prefetch
        )
        await self.bus.start_consumer(self._api_consumer)
        await self.ops.start()
        log.info(
            "node %s ready: ring epoch %d, %d members, services %s",
            self.uuid,
            self.cluster.ring.epoch,
            len(self.cluster.ring.members),
            [s.name for s in self.services],
        )

    async def _on_api(self, env: Envelope) -> HandlerResult:
        """The API gateway step: check the envelope, authenticate, then route to a handler."""
        if env.kind != "api":
            raise RingstackError(Sys.INVALID_ARGUMENT, f"the API queue takes kind 'api', not {env.kind!r}")
        if env.reply_to is not None and not env.reply_to.startswith(self._reply_prefix):
            # The node may publish anywhere; a client must not make it answer into a node's or an
            # agent's queue (an access key's own user cannot publish there). Nobody is answered;
            # the bus logs the one line ("failed with no one to tell").
            env.reply_to = None
            raise RingstackError(Sys.INVALID_ARGUMENT, "replies go only to reply queues")
        route = self.dispatcher.route(env.name)  # unknown names fail before authentication
        message = route.message
        if message.internal:
            raise RingstackError(Sys.UNKNOWN_MESSAGE, f"{env.name} is not an API")
        account = ANONYMOUS if message.public else await self.auth_slot.authenticate(env.session, env.name)
        if message.admin_only and not account.is_admin:
            raise RingstackError(Sys.PERMISSION_DENIED, f"{env.name} needs an admin account")
        msg = validate(message, env.body)
        if message.mutating and (msg.target_uuid() is not None or isinstance(msg, CreateMessage)):
            # About one resource: a durable job on the resource's owner node.
            return await self.cluster.jobs.accept(env, route, msg, account)
        # Reads, and requests about no resource (login...), run right here.
        return await self.dispatcher.dispatch_parsed(route, msg, env, account)

    async def _on_call(self, env: Envelope) -> HandlerResult:
        if self.ops.handles(env.name):
            return await self.ops.on_call(env)
        if RingRuntime.is_internal(env.name):
            return await self.cluster.on_internal(env)
        return await self.cluster.owners.serve(env)

    async def stop(self) -> bool:
        """Stop taking work, drain, close. True when every in-flight request finished in time."""
        if self._stopping:
            await self._stopped.wait()
            return True
        self._stopping = True
        deadline = time.monotonic() + self.config.drain_timeout
        drained = True
        if self._api_consumer is not None:
            await self.bus.cancel(self._api_consumer)
            drained = await self._api_consumer.drain(self.config.drain_timeout)
        if self._started_cluster:
            drained = await self.cluster.stop(max(0.0, deadline - time.monotonic())) and drained
        if self._node_consumer is not None:
            await self.bus.cancel(self._node_consumer)
            drained = await self._node_consumer.drain(max(0.0, deadline - time.monotonic())) and drained
        if not drained:
            log.warning("node %s: drain deadline passed with requests still running", self.uuid)
        for service in reversed(self.services):
            try:
                await service.stop()
            except Exception:
                log.exception("service %s failed to stop cleanly", service.name)
        await self.ops.close()
        await self.bus.close()
        self.db.close()
        self._stopped.set()
        log.info("node %s stopped", self.uuid)
        return drained

    async def run_until_signalled(self) -> bool:
        loop = asyncio.get_running_loop()
        stop_requested = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop_requested.set)
        await self.start()
        await stop_requested.wait()
        log.info("node %s: stop requested; draining", self.uuid)
        return await self.stop()
