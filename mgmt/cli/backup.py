"""``ringstack-ctl backup`` / ``restore``: the database and the node's config file in one archive.

The archive (``.tar.gz``) holds ``manifest.json`` (format, time, ringstack version, schema
revision, database name), ``database.dump`` (``pg_dump --format=custom``: every table, sequence and
the migration revision) and ``ringstack.toml`` when the node reads a config file.

Restore replaces the database's contents with the archive's (``pg_restore --clean --if-exists
--single-transaction``: all or nothing) and refuses while a management node is alive, since
nodes would keep writing to what is being replaced (``--force`` overrides, e.g. for nodes recorded
alive that died). The config file is written back only with ``--config-to PATH``.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

FORMAT = 1
DUMP, CONFIG, MANIFEST = "database.dump", "ringstack.toml", "manifest.json"


class BackupError(Exception):
    pass


def libpq(url: str) -> tuple[list[str], dict[str, str]]:
    """``pg_dump``/``pg_restore`` arguments and environment for a SQLAlchemy URL (password in
    PGPASSWORD, never on a command line)."""
    parts = urllib.parse.urlsplit(url)
    if not parts.scheme.startswith("postgresql"):
        raise BackupError(f"only PostgreSQL databases can be backed up, not {parts.scheme}")
    args = ["--host", parts.hostname or "127.0.0.1", "--port", str(parts.port or 5432)]
    if parts.username:
        args += ["--username", urllib.parse.unquote(parts.username)]
    args += ["--dbname", parts.path.lstrip("/")]
    env = {**os.environ}
    if parts.password:
        env["PGPASSWORD"] = urllib.parse.unquote(parts.password)
    return args, env


def _run(cmd: list[str], env: dict[str, str]) -> None:
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False, timeout=3600)
    except FileNotFoundError:
        raise BackupError(f"{cmd[0]} is not installed (Debian: apt-get install postgresql-client)") from None
    if done.returncode != 0:
        raise BackupError(f"{cmd[0]} failed: {done.stderr.strip()[-2000:]}")


def _revision(url: str) -> str | None:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except Exception:
        return None
    finally:
        engine.dispose()


def alive_nodes(url: str) -> list[str]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return [
                r[0] for r in conn.execute(text("SELECT uuid FROM management_node WHERE state = 'alive'"))
            ]
    finally:
        engine.dispose()


def backup(database_url: str, config_path: Path | None, output: Path) -> dict[str, Any]:
    args, env = libpq(database_url)
    from importlib.metadata import PackageNotFoundError, version

    try:
        release = version("ringstack")
    except PackageNotFoundError:
        release = "unknown"
    manifest = {
        "format": FORMAT,
        "createdAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "ringstack": release,
        "revision": _revision(database_url),
        "database": args[-1],
        "config": bool(config_path and config_path.is_file()),
    }
    with tempfile.TemporaryDirectory() as tmp:
        dump = Path(tmp) / DUMP
        _run(["pg_dump", "--format=custom", "--no-owner", "--no-privileges", "--file", str(dump), *args], env)
        partial = output.with_name(f".{output.name}.partial")
        with tarfile.open(partial, "w:gz") as tar:
            data = json.dumps(manifest, indent=2).encode()
            info = tarfile.TarInfo(MANIFEST)
            info.size, info.mtime = len(data), int(time.time())
            tar.addfile(info, io.BytesIO(data))
            tar.add(dump, DUMP)
            if manifest["config"]:
                assert config_path is not None
                tar.add(config_path, CONFIG)
        os.chmod(partial, 0o600)  # the database holds password hashes and secrets
        os.replace(partial, output)
    return manifest


def restore(
    database_url: str, archive: Path, *, force: bool = False, config_to: Path | None = None
) -> dict[str, Any]:
    alive = alive_nodes(database_url)
    if alive and not force:
        raise BackupError(
            f"{len(alive)} management node(s) alive ({', '.join(a[:8] for a in alive)}): stop them first"
            " (ringstack-ctl stop), or --force if they are dead"
        )
    args, env = libpq(database_url)
    with tempfile.TemporaryDirectory() as tmp, tarfile.open(archive, "r:gz") as tar:
        names = set(tar.getnames())
        if not {MANIFEST, DUMP} <= names:
            raise BackupError(f"{archive} is not a ringstack backup (no {MANIFEST} or {DUMP})")
        member = tar.extractfile(MANIFEST)
        assert member is not None
        manifest = json.loads(member.read())
        if manifest.get("format") != FORMAT:
            raise BackupError(f"backup format {manifest.get('format')} is not {FORMAT}")
        tar.extract(DUMP, tmp, filter="data")
        _run(
            [
                "pg_restore",
                "--clean",
                "--if-exists",
                "--single-transaction",
                "--no-owner",
                "--no-privileges",
                *args,
                str(Path(tmp) / DUMP),
            ],
            env,
        )
        # Nodes recorded alive in the backup are not running now (checked above): recorded as
        # dead, the next node to start takes their partitions and resumes their unfinished jobs.
        engine = create_engine(database_url)
        try:
            with engine.begin() as conn:
                conn.execute(text("UPDATE management_node SET state = 'dead' WHERE state = 'alive'"))
        finally:
            engine.dispose()
        if config_to is not None:
            if CONFIG not in names:
                raise BackupError("the backup holds no config file")
            config = tar.extractfile(CONFIG)
            assert config is not None
            config_to.write_bytes(config.read())
    return manifest
