"""Loading a process's settings: a TOML file, then ``RINGSTACK_<KEY>`` environment variables, then
explicit overrides (CLI flags). Shared by the management node and the agents.

An unknown key or an invalid value is a ``ConfigError`` naming the key and where it came from;
nothing starts on a configuration it does not understand.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

ENV_PREFIX = "RINGSTACK_"
S = TypeVar("S", bound=BaseModel)


class ConfigError(Exception):
    pass


def _from_env(model: type[BaseModel], environ: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        raw = environ.get(ENV_PREFIX + name.upper())
        if raw is None:
            continue
        if info.annotation is not None and "list" in str(info.annotation):
            values[name] = [item.strip() for item in raw.split(",") if item.strip()]
        else:
            values[name] = raw
    return values


def _read_toml(path: str | Path) -> dict[str, Any]:
    try:
        return tomllib.loads(Path(path).read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid TOML (UTF-8): {exc}") from None


def load_settings(
    model: type[S],
    *,
    path: str | Path | None,
    environ: Mapping[str, str] | None,
    overrides: Mapping[str, Any] | None,
    config_env: str,
    default_path: Path,
    what: str,
) -> S:
    """``path``, else ``$config_env``, else ``default_path`` when it exists; then the environment."""
    environ = os.environ if environ is None else environ
    chosen = path or environ.get(config_env)
    if chosen is None and default_path.exists():
        chosen = default_path
    file_values = _read_toml(chosen) if chosen is not None else {}
    source = str(chosen) if chosen is not None else "defaults"
    values = {**file_values, **_from_env(model, environ), **(overrides or {})}
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors())
        raise ConfigError(f"invalid {what} (from {source} and {ENV_PREFIX}* variables): {problems}") from None
