"""Management node configuration: a TOML file, then ``RINGSTACK_*`` environment variables on top.

Precedence: explicit overrides (CLI flags) > environment > file > defaults. An unknown key in the
file or an invalid value is a ``ConfigError`` naming the key and where it came from; nothing starts
on a config it does not understand.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from schema.settings import ENV_PREFIX, ConfigError, load_settings

DEFAULT_CONFIG_PATH = Path("/etc/ringstack/ringstack.toml")


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
    heartbeat_interval: float = Field(default=1.0, gt=0, le=60)
    heartbeat_misses: int = Field(default=3, ge=2, le=100)
    lease_ttl: float = Field(default=2.5, gt=0.5, le=300, description="must exceed heartbeat_interval")
    ring_vnodes: int = Field(default=160, ge=1, le=10_000)
    max_forward_hops: int = Field(default=3, ge=1, le=10)
    job_timeout: float = Field(
        default=600.0, gt=0, description="budget of a job whose caller's deadline passed"
    )
    agent_timeout: float = Field(default=120.0, gt=0, description="deadline of one agent command")
    host_ping_interval: float = Field(default=5.0, gt=0, description="how often a host's owner pings it")
    host_ping_misses: int = Field(default=3, ge=1, description="missed pings before a host is Disconnected")
    extra_services: list[str] = Field(default_factory=list, description="'module:Class' services to load too")
    disabled_services: list[str] = Field(default_factory=list)
    log_level: str = Field(default="INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$")
    # identity: the bootstrap admin's first password (used only when the node creates the admin
    # account), login session lifetime, and per-quota default limits (mgmt/core/quota.py names)
    admin_initial_password: str = Field(default="password", min_length=1)
    session_timeout: float = Field(default=7200, gt=0)
    quota_defaults: dict[str, int] = Field(default_factory=dict)


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
