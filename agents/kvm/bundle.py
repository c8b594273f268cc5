"""The install bundle of the KVM agent: what the management node ships to a host to install.

A host never reaches a package index. The management node builds, once per code version, a
tarball with the ringstack wheel it runs itself (built from its source tree, or a given wheel), the
wheels of what the agent imports (``AGENT_REQUIREMENTS``) at the versions installed on the
management node (fetched through the management node's own pip configuration, as its installation
was), and::

    BUILD_ID           what the Ansible role compares with the host's installed build to skip work
    requirements.txt   the dependencies, pinned (installed with --no-index from wheels/)
    constraints.txt    the same pins for pip's resolver
    wheels/            every wheel, ringstack's included

ringstack itself is installed without its declared dependencies: those are the management node's
(SQLAlchemy, psycopg2, alembic, paramiko, ...), which have no business on a hypervisor and would
triple the install time. The deployment test proves the agent starts with only these.

The build id hashes the sources and the pins, so a changed line of code makes a new bundle even
though the version number in setup.cfg stayed the same. Blocking (pip takes seconds to a minute):
the management side calls it from a thread.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from bus.errors import RingstackError, Sys

PACKAGES = ("bus", "schema", "mgmt", "agents")
# What the agent's modules import (agents.kvm, agents.common, bus.aio, schema): the rest follows.
AGENT_REQUIREMENTS = ("aio-pika", "pydantic", "orjson", "libvirt-python")
SOURCE_FILES = ("setup.cfg", "pyproject.toml", "README.md")
_SOURCE_SUFFIXES = (".py", ".ini", ".mako", ".typed")


@dataclass(frozen=True)
class Bundle:
    path: Path
    build_id: str
    wheel: str  # file name of the ringstack wheel inside wheels/


def source_root() -> Path | None:
    """The source tree this code runs from, when it runs from one (development, CI)."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "setup.cfg").is_file() and (root / "agents").is_dir() else None


def _source_files(root: Path) -> list[Path]:
    files = [root / name for name in SOURCE_FILES if (root / name).is_file()]
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*")):
            if path.is_file() and path.suffix in _SOURCE_SUFFIXES and "__pycache__" not in path.parts:
                files.append(path)
    return files


def pins() -> list[str]:
    """``name==version`` of every distribution installed here except ringstack itself."""
    found: dict[str, str] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name and re.sub(r"[-_.]+", "-", name).lower() != "ringstack":
            found[re.sub(r"[-_.]+", "-", name).lower()] = dist.version
    return sorted(f"{name}=={version}" for name, version in found.items())


def build_id(root: Path | None, wheel: Path | None, pinned: list[str]) -> str:
    digest = hashlib.sha256()
    if wheel is not None:
        digest.update(wheel.read_bytes())
    else:
        assert root is not None
        for path in _source_files(root):
            digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    digest.update("\n".join(pinned).encode())
    return digest.hexdigest()[:16]


def _pip(*args: str, cwd: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pip", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if done.returncode != 0:
        raise RingstackError(
            Sys.UNAVAILABLE,
            f"pip {args[0]} failed building the agent bundle: {done.stderr.strip()[-1500:]}",
        )


def build_bundle(cache_dir: Path, *, wheel: Path | None = None) -> Bundle:
    """The bundle for the code running here, built into ``cache_dir`` unless already there."""
    root = source_root()
    if wheel is None and root is None:
        raise RingstackError(
            Sys.INVALID_ARGUMENT,
            "ringstack runs from no source tree here; give the wheel to install on hosts",
        )
    pinned = pins()
    bid = build_id(root, wheel, pinned)
    target = cache_dir / f"ringstack-kvm-agent-{bid}.tar.gz"
    if target.exists():
        with tarfile.open(target) as tar:
            names = [Path(n).name for n in tar.getnames() if re.match(r"wheels/ringstack-[^/]+\.whl$", n)]
        return Bundle(target, bid, names[0])
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="rs-bundle-", dir=cache_dir) as tmp:
        work = Path(tmp)
        wheels = work / "wheels"
        wheels.mkdir()
        if wheel is None:
            assert root is not None
            src = work / "src"
            for path in _source_files(root):  # a copy: building must leave the source tree clean
                dest = src / path.relative_to(root)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, dest)
            _pip("wheel", "--no-deps", "-q", "-w", str(wheels), str(src), cwd=work)
        else:
            shutil.copy2(wheel, wheels / wheel.name)
        (own,) = list(wheels.glob("ringstack-*.whl"))
        own_name = own.name
        (work / "constraints.txt").write_text("\n".join(pinned) + "\n")
        _pip("wheel", "-q", "-w", str(wheels), "-c", "constraints.txt", *AGENT_REQUIREMENTS, cwd=work)
        deps = sorted(
            f"{w.name.split('-')[0]}=={w.name.split('-')[1]}" for w in wheels.glob("*.whl") if w != own
        )
        (work / "requirements.txt").write_text("\n".join(deps) + "\n")
        (work / "BUILD_ID").write_text(bid + "\n")
        partial = work / "bundle.tar.gz"
        with tarfile.open(partial, "w:gz") as tar:
            for name in ("BUILD_ID", "requirements.txt", "constraints.txt", "wheels"):
                tar.add(work / name, arcname=name)
        os.replace(partial, target)
    _prune(cache_dir, keep=target)
    return Bundle(target, bid, own_name)


def _prune(cache_dir: Path, keep: Path, count: int = 3) -> None:
    """Keep the newest few bundles: hosts still on an older build are reinstalled from a new one."""
    bundles = sorted(
        cache_dir.glob("ringstack-kvm-agent-*.tar.gz"), key=lambda p: p.stat().st_mtime, reverse=True
    )
    for old in bundles[count:]:
        if old != keep:
            old.unlink(missing_ok=True)
