"""Connecting to a host: what its status becomes, and why.

A Simulator host is served by a simulator process (``python -m agents.simulator``): connecting
asks that process, on its control queue, to serve the host with the capacity it was added with,
then speaks ``agent.connect`` to it like to any agent. No simulator running: Disconnected, with the
reason.

A KVM host gets its agent deployed over SSH by ``mgmt.core.hostdeploy``, a ``FlowChain`` (ZStack's
connect chain: SSH check, the host's broker user, the agent bundle, the Ansible playbook,
``agent.connect``). A reconnect runs the same chain, and the playbook skips the install when the
host already has the build. Any failure leaves the host Disconnected with ``HOST.DEPLOY_FAILED``,
the step that failed and the reason; a first deployment's broker user and agent are undone, a
redeployment's are kept (see there).
"""

from __future__ import annotations

import ipaddress
import logging
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from bus.aio import AsyncBus
from bus.errors import RingstackError, Sys
from mgmt.config import NodeConfig
from mgmt.core.agents import AgentClient
from mgmt.core.hostdeploy import DEPLOY_FAILED, deploy_kvm_host
from schema.agent import ConnectCommand, ConnectReply

SIMULATOR_CONTROL = "simulator"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConnectResult:
    status: str
    reason: str | None = None
    facts: ConnectReply | None = None
    error: RingstackError | None = None  # why it is not Connected, for the API's error reply


async def connect_simulator(
    bus: AsyncBus, agents: AgentClient, host_uuid: str, cpu: int, memory: int, timeout: float = 15.0
) -> ConnectResult:
    control = f"{bus.topology.namespace}.{SIMULATOR_CONTROL}"
    try:
        await bus.call(
            control,
            "simulator.add_hosts",
            {"hosts": [{"uuid": host_uuid, "cpuNum": cpu, "memorySize": memory}]},
            timeout=timeout,
        )
        facts = await agents.call(ConnectCommand(host_uuid=host_uuid), ConnectReply, timeout=timeout)
    except RingstackError as exc:
        return ConnectResult(
            "Disconnected",
            f"{exc.code}: no simulator serves this host ({exc.message}); run python -m agents.simulator",
        )
    return ConnectResult("Connected", facts=facts)


def _loopback(url: str) -> bool:
    host = urllib.parse.urlsplit(url).hostname or ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def deploy_error(exc: RingstackError, host_broker_url: str) -> RingstackError:
    """A failed deployment as ``HOST.DEPLOY_FAILED`` with its step and reason, whatever failed, and
    a hint for the usual mistake: a broker URL on loopback (the default ``broker_url``'s), which
    on a host is the host itself, so its agent never connects."""
    if exc.code != DEPLOY_FAILED:  # e.g. neither a password nor a key is stored
        return RingstackError(
            DEPLOY_FAILED,
            f"deploying the KVM agent failed: {exc.message}",
            details={"step": "prepare", "reason": exc.message},
        )
    if exc.details.get("step") == "connect" and _loopback(host_broker_url):
        hint = (
            f"the agent was told the broker is at {host_broker_url}, which on the host is the host"
            " itself: set agent_broker_url to the broker's address as hosts reach it"
        )
        return RingstackError(exc.code, f"{exc.message}; {hint}", details={**exc.details, "hint": hint})
    return exc


@dataclass(frozen=True)
class KvmLogin:
    """How the management node logs in to a KVM host (the secrets never appear in a repr)."""

    ip: str
    port: int
    username: str
    password: str | None = field(default=None, repr=False)
    ssh_key: str | None = field(default=None, repr=False)


async def connect_kvm(
    bus: AsyncBus, config: NodeConfig, host_uuid: str, login: KvmLogin, management_node_uuid: str | None
) -> ConnectResult:
    """Deploy (or re-deploy) the agent on a KVM host and collect its facts; never raises for a
    host that cannot be deployed: the result says Disconnected and why."""
    started = time.monotonic()
    try:
        result = await deploy_kvm_host(
            host_uuid,
            login.ip,
            port=login.port,
            username=login.username,
            password=login.password,
            ssh_key=login.ssh_key,
            bus=bus,
            agent_broker_url=config.host_broker_url(),
            agent_settings={**config.kvm_agent_settings, "domain_type": config.kvm_domain_type},
            playbook_vars=config.kvm_playbook_vars,
            bundle_cache_dir=Path(config.agent_bundle_dir),
            agent_wheel=Path(config.agent_wheel) if config.agent_wheel else None,
            management_node_uuid=management_node_uuid,
            ssh_timeout=config.kvm_ssh_timeout,
            playbook_timeout=config.kvm_playbook_timeout,
            connect_timeout=config.kvm_connect_timeout,
        )
    except RingstackError as failed:
        exc = deploy_error(failed, config.host_broker_url())
        log.warning("host %s: %s", host_uuid, exc.message)
        return ConnectResult("Disconnected", f"{exc.code}: {exc.message}", error=exc)
    except Exception as exc:  # a bug must not leave the host Connecting for ever
        log.exception("host %s: deploying the KVM agent failed unexpectedly", host_uuid)
        error = RingstackError(
            Sys.INTERNAL,
            f"deploying the KVM agent failed unexpectedly ({type(exc).__name__}); see the node's log",
        )
        return ConnectResult("Disconnected", f"{error.code}: {error.message}", error=error)
    log.info(
        "host %s: KVM agent deployed and connected in %.1f s (build %s, playbook changed: %s;"
        " seconds per step: %s)",
        host_uuid,
        time.monotonic() - started,
        result.build_id,
        "yes" if result.playbook_changed else "no",
        result.seconds,
    )
    return ConnectResult("Connected", facts=result.facts)
