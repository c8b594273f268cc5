"""The KVM agent's configuration: a TOML file, then ``RINGSTACK_<KEY>`` environment variables on top.

The file is ``--config``, else ``$RINGSTACK_KVM_AGENT_CONFIG``, else ``/etc/ringstack/kvm-agent.toml``
when it exists. The Ansible host role writes that file (broker URL with the host's own credentials,
namespace, host uuid). An unknown key or a bad value is a ``ConfigError`` naming it: the agent does
not start on a configuration it does not understand.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

ENV_PREFIX = "RINGSTACK_"
CONFIG_ENV = "RINGSTACK_KVM_AGENT_CONFIG"  # not RINGSTACK_CONFIG: that one is the management node's
DEFAULT_CONFIG_PATH = Path("/etc/ringstack/kvm-agent.toml")


class ConfigError(Exception):
    pass


class AgentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    host_uuid: str = Field(pattern=r"^[0-9a-f]{32}$")
    broker_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    namespace: str = Field(default="ringstack", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    libvirt_uri: str = "qemu:///system"
    # kvm in production; qemu (TCG) where KVM cannot run guests (nested without vmx/svm, CI).
    domain_type: Literal["kvm", "qemu"] = "kvm"
    # NFS exports are mounted under <mount_dir>/<primary storage uuid>.
    mount_dir: str = "/var/lib/ringstack/kvm-agent/mounts"
    # Serial console output of each VM goes to <console_log_dir>/<vm uuid>.log when set.
    console_log_dir: str | None = None
    vnc_listen: str = "0.0.0.0"
    console_hostname: str | None = Field(
        default=None, description="what console replies name; default: hostname"
    )
    # Run every `ip` command inside this network namespace (tests; a host is a namespace there).
    netns: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    stop_timeout: float = Field(default=30.0, gt=0, le=3600, description="ACPI grace of a reboot")
    download_timeout: float = Field(default=600.0, gt=0, description="seconds to fetch one image")
    workers: int = Field(default=8, ge=1, le=64, description="threads for blocking libvirt/disk calls")
    prefetch: int = Field(default=16, ge=1, le=1000, description="commands handled at once")
    log_level: str = Field(default="INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$")


def _from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name in AgentConfig.model_fields:
        raw = environ.get(ENV_PREFIX + name.upper())
        if raw is not None:
            values[name] = raw
    return values


def load_config(
    path: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> AgentConfig:
    environ = os.environ if environ is None else environ
    chosen = path or environ.get(CONFIG_ENV)
    if chosen is None and DEFAULT_CONFIG_PATH.exists():
        chosen = DEFAULT_CONFIG_PATH
    file_values: dict[str, Any] = {}
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
        return AgentConfig.model_validate(values)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors())
        raise ConfigError(
            f"invalid KVM agent configuration (from {source} and {ENV_PREFIX}* variables): {problems}"
        ) from None
