"""The KVM agent's configuration: a TOML file, then ``RINGSTACK_<KEY>`` environment variables on top.

The file is ``--config``, else ``$RINGSTACK_KVM_AGENT_CONFIG``, else ``/etc/ringstack/kvm-agent.toml``
when it exists. The Ansible host role writes that file (broker URL with the host's own credentials,
namespace, host uuid). An unknown key or a bad value is a ``ConfigError`` naming it: the agent does
not start on a configuration it does not understand.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from schema.settings import ConfigError, load_settings

CONFIG_ENV = "RINGSTACK_KVM_AGENT_CONFIG"  # not RINGSTACK_CONFIG: that one is the management node's
DEFAULT_CONFIG_PATH = Path("/etc/ringstack/kvm-agent.toml")


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
    flat_dir: str = "/var/lib/ringstack/kvm-agent/flat"  # flat-network dnsmasq files
    # Serial console output of each VM goes to <console_log_dir>/<vm uuid>.log when set.
    console_log_dir: str | None = None
    vnc_listen: str = "0.0.0.0"
    console_hostname: str | None = Field(
        default=None, description="what console replies name; default: hostname"
    )
    # Run every `ip` command inside this network namespace (tests; a host is a namespace there).
    netns: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    # Directories this host shares with the other hosts (the same files at the same paths) in a
    # way libvirt cannot tell, which refuses to live-migrate disks on a filesystem it does not know
    # to be shared ("Migration without shared storage is unsafe"; NFS it knows). A VM whose disks
    # all lie under them migrates with that check waived (newer libvirt has qemu.conf's
    # shared_filesystems for the same). Empty: libvirt judges.
    migration_shared_paths: list[str] = Field(default_factory=list)
    stop_timeout: float = Field(default=30.0, gt=0, le=3600, description="ACPI grace of a reboot")
    download_timeout: float = Field(default=600.0, gt=0, description="seconds to fetch one image")
    workers: int = Field(default=8, ge=1, le=64, description="threads for blocking libvirt/disk calls")
    prefetch: int = Field(default=16, ge=1, le=1000, description="commands handled at once")
    log_level: str = Field(default="INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$")


def load_config(
    path: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> AgentConfig:
    return load_settings(
        AgentConfig,
        path=path,
        environ=environ,
        overrides=overrides,
        config_env=CONFIG_ENV,
        default_path=DEFAULT_CONFIG_PATH,
        what="KVM agent configuration",
    )


__all__ = ["AgentConfig", "ConfigError", "load_config"]
