"""Management node configuration: a TOML file, then ``RINGSTACK_*`` environment variables on top.

Precedence: explicit overrides (CLI flags) > environment > file > defaults. An unknown key in the
file or an invalid value is a ``ConfigError`` naming the key and where it came from; nothing starts
on a config it does not understand.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

ENV_PREFIX = "RINGSTACK_"
DEFAULT_CONFIG_PATH = Path("/etc/ringstack/ringstack.toml")


class ConfigError(Exception):
    pass


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


def _from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for field_name, info in NodeConfig.model_fields.items():
        raw = environ.get(ENV_PREFIX + field_name.upper())
        if raw is None:
            continue
        if info.annotation is not None and "list" in str(info.annotation):
            values[field_name] = [item.strip() for item in raw.split(",") if item.strip()]
        else:
            values[field_name] = raw
    return values


def load_config(
    path: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> NodeConfig:
    environ = os.environ if environ is None else environ
    file_values: dict[str, Any] = {}
    chosen = path or environ.get(ENV_PREFIX + "CONFIG")
    if chosen is None and DEFAULT_CONFIG_PATH.exists():
        chosen = DEFAULT_CONFIG_PATH
    source = "defaults"
    if chosen is not None:
        source = str(chosen)
        try:
            file_values = tomllib.loads(Path(chosen).read_bytes().decode("utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {chosen} does not exist") from None
        except OSError as exc:
            raise ConfigError(f"config file {chosen} cannot be read: {exc.strerror or exc}") from None
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"config file {chosen} is not valid TOML (UTF-8): {exc}") from None
    values = {**file_values, **_from_env(environ), **(overrides or {})}
    try:
        return NodeConfig.model_validate(values)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors())
        raise ConfigError(
            f"invalid configuration (from {source} and {ENV_PREFIX}* variables): {problems}"
        ) from None
