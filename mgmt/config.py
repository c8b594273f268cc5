"""Management node configuration: a TOML file, then ``RINGSTACK_*`` environment variables on top.

Precedence: explicit overrides (CLI flags) > environment > file > defaults. An unknown key in the
file or an invalid value is a ``ConfigError`` naming the key and where it came from; nothing starts
on a config it does not understand.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from agents.kvm.config import AgentConfig
from schema.settings import ENV_PREFIX, ConfigError, load_settings

DEFAULT_CONFIG_PATH = Path("/etc/ringstack/ringstack.toml")

# Agent config keys (agents/kvm/config.py) a node may set for every KVM host it deploys: all but
# those the deployment writes itself for each host.
KVM_AGENT_KEYS = frozenset(AgentConfig.model_fields) - {"host_uuid", "namespace", "broker_url", "domain_type"}
# Variables of the KVM host playbook's role (ansible/roles/kvm_agent/defaults/main.yml).
KVM_PLAYBOOK_VARS = frozenset(
    {
        "agent_root",
        "agent_venv",
        "agent_config_path",
        "agent_pid_file",
        "agent_log_file",
        "agent_python",
        "agent_start_timeout",
        "libvirt_listen_tcp",
        "libvirtd_conf_path",
        "libvirtd_service",
        "libvirtd_tcp_socket",
        "libvirtd_defaults_path",
    }
)
Scalar = str | int | float | bool


class NodeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    broker_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    database_url: str = "postgresql+psycopg2://postgres@127.0.0.1:5432/ringstack"
    namespace: str = Field(default="ringstack", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    node_uuid: str | None = Field(default=None, pattern=r"^[0-9a-f]{32}$")
    node_address: str = "127.0.0.1"
    api_prefetch: int = Field(default=128, ge=1, le=10_000)
    node_prefetch: int = Field(default=256, ge=1, le=10_000)
    db_pool_size: int = Field(default=8, ge=1, le=256)
    drain_timeout: float = Field(default=30.0, gt=0)
    default_call_timeout: float = Field(default=30.0, gt=0)
    max_message_bytes: int = Field(default=1 << 20, ge=1024)
    serial_queue_limit: int = Field(default=1000, ge=1)
    # Failover of a crashed node takes about its lease's remaining time (<= lease_ttl) plus a few
    # hundred ms (bench/failover.py). A lease is renewed every heartbeat_interval from a thread of
    # its own; a node fences itself when no renewal succeeded for lease_ttl - 0.25 s, so a renewal
    # may be late by lease_ttl - 0.25 - heartbeat_interval = 1.25 s (as with the former 1.0 / 2.5).
    heartbeat_interval: float = Field(default=0.5, gt=0, le=60)
    heartbeat_misses: int = Field(default=3, ge=2, le=100)
    lease_ttl: float = Field(default=2.0, gt=0.5, le=300, description="must exceed heartbeat_interval")
    ring_vnodes: int = Field(default=160, ge=1, le=10_000)
    max_forward_hops: int = Field(default=3, ge=1, le=10)
    job_timeout: float = Field(
        default=600.0, gt=0, description="budget of a job whose caller's deadline passed"
    )
    agent_timeout: float = Field(default=120.0, gt=0, description="deadline of one agent command")
    stuck_scan_interval: float = Field(
        default=60.0,
        gt=0,
        description="how often a node looks for resources it owns left in a transitional state with no"
        " job acting on them, and settles them (also on every takeover)",
    )
    host_ping_interval: float = Field(default=5.0, gt=0, description="how often a host's owner pings it")
    host_ping_misses: int = Field(default=3, ge=1, description="missed pings before a host is Disconnected")
    extra_services: list[str] = Field(default_factory=list, description="'module:Class' services to load too")
    disabled_services: list[str] = Field(default_factory=list)
    ops_address: str = Field(
        default="127.0.0.1:0",
        pattern=r"^$|^[^:]*:\d{1,5}$",
        description="host:port of /healthz, /readyz and /metrics (port 0: any free one, logged; empty: none)",
    )
    log_file: str | None = Field(
        default=None,
        description="also write the node's log here (reopened when logrotate moves it); read by ringstack-ctl logs and collect-logs",
    )
    log_level: str = Field(default="INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$")
    # identity: the bootstrap admin's first password (used only when the node creates the admin
    # account), login session lifetime, and per-quota default limits (mgmt/core/quota.py names)
    admin_initial_password: str = Field(default="password", min_length=1)
    session_timeout: float = Field(default=7200, gt=0)
    quota_defaults: dict[str, int] = Field(default_factory=dict)
    # KVM hosts (AddKVMHost/ReconnectHost deploy the agent over SSH: mgmt/core/hostdeploy.py)
    agent_broker_url: str | None = Field(
        default=None,
        pattern=r"^amqps?://",
        description="the broker as KVM hosts reach it (credentials in it are ignored: each host gets"
        " its own user); default: broker_url without its credentials",
    )
    kvm_domain_type: Literal["kvm", "qemu"] = Field(
        default="kvm", description="kvm; qemu (TCG) where hosts cannot run KVM guests (nested, CI)"
    )
    agent_bundle_dir: str = Field(
        default="/var/lib/ringstack/agent-bundles", min_length=1, description="where agent bundles are cached"
    )
    agent_wheel: str | None = Field(
        default=None,
        description="the ringstack wheel to install on hosts; needed when the node runs from no source tree",
    )
    kvm_ssh_timeout: float = Field(default=10.0, gt=0, le=600, description="seconds for SSH to answer")
    kvm_playbook_timeout: float = Field(default=900.0, gt=0, description="seconds for the host playbook")
    kvm_connect_timeout: float = Field(
        default=60.0, gt=0, description="seconds for a freshly started agent to answer agent.connect"
    )
    kvm_agent_settings: dict[str, Scalar] = Field(
        default_factory=dict, description="agent config keys written for every KVM host (libvirt_uri, ...)"
    )
    kvm_playbook_vars: dict[str, Scalar] = Field(
        default_factory=dict, description="KVM host role variables (agent_root, agent_python, ...)"
    )

    @field_validator("kvm_agent_settings", "kvm_playbook_vars", mode="before")
    @classmethod
    def _json_object(cls, value: Any) -> Any:
        """From the environment a table arrives as a string: JSON, e.g. '{"netns": "ns1"}'."""
        if isinstance(value, str):
            try:
                return json.loads(value) if value.strip() else {}
            except ValueError:
                raise ValueError("expected a table (in the environment: a JSON object)") from None
        return value

    @field_validator("kvm_agent_settings")
    @classmethod
    def _agent_keys(cls, value: dict[str, Scalar]) -> dict[str, Scalar]:
        unknown = sorted(set(value) - KVM_AGENT_KEYS)
        if unknown:
            raise ValueError(f"not agent settings a node may set: {', '.join(unknown)}")
        return value

    @field_validator("kvm_playbook_vars")
    @classmethod
    def _playbook_keys(cls, value: dict[str, Scalar]) -> dict[str, Scalar]:
        unknown = sorted(set(value) - KVM_PLAYBOOK_VARS)
        if unknown:
            raise ValueError(f"not variables of the KVM host role: {', '.join(unknown)}")
        return value

    def host_broker_url(self) -> str:
        """The broker URL written (with the host's own credentials) into a KVM agent's config."""
        parts = urllib.parse.urlsplit(self.agent_broker_url or self.broker_url)
        host = parts.hostname or "127.0.0.1"
        netloc = f"[{host}]" if ":" in host else host
        if parts.port:
            netloc += f":{parts.port}"
        return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))


def load_config(
    path: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> NodeConfig:
    return load_settings(
        NodeConfig,
        path=path,
        environ=environ,
        overrides=overrides,
        config_env=ENV_PREFIX + "CONFIG",
        default_path=DEFAULT_CONFIG_PATH,
        what="configuration",
    )


__all__ = ["ConfigError", "NodeConfig", "load_config"]
