"""The VR agent's configuration: a TOML file, then ``RINGSTACK_<KEY>`` environment variables on top.

The file is ``--config``, else ``$RINGSTACK_VROUTER_AGENT_CONFIG``, else
``/etc/ringstack/vrouter-agent.toml``. In an appliance it is written at boot from the boot data the
management side passes (broker URL with the VR's own credentials, namespace, VR uuid); nothing in
the image holds a secret.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from schema.settings import ConfigError, load_settings

CONFIG_ENV = "RINGSTACK_VROUTER_AGENT_CONFIG"
DEFAULT_CONFIG_PATH = Path("/etc/ringstack/vrouter-agent.toml")


class VrouterConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    host_uuid: str = Field(pattern=r"^[0-9a-f]{32}$", description="the VR's uuid")
    broker_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    namespace: str = Field(default="ringstack", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    # Desired state (survives an agent restart: an incremental change after a restart must not
    # drop the rest) and dnsmasq's files.
    state_dir: str = "/var/lib/ringstack/vrouter"
    firewall: Literal["nft", "legacy"] = "nft"
    # Drift (a rule deleted by hand, a flushed table) is repaired this often; 0 turns it off.
    reconcile_interval: float = Field(default=10.0, ge=0, le=3600)
    dhcp_lease_time: int = Field(default=3600, ge=120, le=31536000, description="seconds")
    prefetch: int = Field(default=16, ge=1, le=1000)
    log_level: str = Field(default="INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$")


def load_config(
    path: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> VrouterConfig:
    return load_settings(
        VrouterConfig,
        path=path,
        environ=environ,
        overrides=overrides,
        config_env=CONFIG_ENV,
        default_path=DEFAULT_CONFIG_PATH,
        what="virtual-router agent configuration",
    )


__all__ = ["ConfigError", "VrouterConfig", "load_config"]
