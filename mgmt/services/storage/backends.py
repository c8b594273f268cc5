"""Backup storage backends: where image files are written, and how the storage is checked.

Blocking I/O throughout: callers run these in a thread. Every file is first written under a
temporary name (``.<name>.part`` next to it) and renamed into place only once complete, so a
failed or interrupted import never leaves a file under a name anything would use; ``abort``
removes the partial file.

- ``LocalDirBackend``: a directory on the management node (``AddLocalDirBackupStorage``).
- ``SftpBackend``: a directory on a remote machine, over SSH/SFTP with paramiko.
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import re
import shlex
from dataclasses import dataclass
from typing import IO, Protocol

import paramiko
from sqlalchemy.orm import Session

from bus.errors import RingstackError
from mgmt.services.storage.errors import StorageError
from mgmt.services.storage.sftp import SshTarget, connect, unreachable
from schema.db.storage import BackupStorage, BackupStorageSecret

IMAGE_DIR = "images"
_UUID = re.compile(r"^[0-9a-f]{32}$")
_FORMATS = ("qcow2", "raw", "iso")


def image_path(bs_url: str, image_uuid: str, fmt: str) -> str:
    """Where an image's copy lives on a backup storage: ``<url>/images/<uuid>.<format>``.

    The parts are checked again here (the API validated them) because this path is written to
    and deleted: nothing may steer it outside the storage's directory.
    """
    if not _UUID.match(image_uuid) or fmt not in _FORMATS:
        raise ValueError(f"bad image uuid or format: {image_uuid!r}, {fmt!r}")
    if not bs_url.startswith("/") or ".." in bs_url.split("/"):
        raise ValueError(f"bad backup storage path {bs_url!r}")
    return posixpath.join(bs_url, IMAGE_DIR, f"{image_uuid}.{fmt}")


def part_path(path: str) -> str:
    """The temporary name a file is written under until complete."""
    head, tail = posixpath.split(path)
    return posixpath.join(head, f".{tail}.part")


@dataclass(frozen=True)
class Probe:
    total: int  # bytes of the file system the directory is on
    free: int
    host_key: str | None = None  # Sftp: the server's host key


class ImageWriter(Protocol):
    def write(self, chunk: bytes) -> None: ...

    def commit(self) -> None:
        """Make the file visible under its final name."""

    def abort(self) -> None:
        """Remove the partial file; never raises."""


class Backend(Protocol):
    def probe(self) -> Probe:
        """Create the directory if needed, check it is writable, measure its file system."""

    def open_writer(self, path: str) -> ImageWriter: ...

    def remove(self, path: str) -> None:
        """Delete a file; a missing one is fine."""

    def close(self) -> None: ...


@dataclass(frozen=True)
class BackendSpec:
    """What is needed to reach a backup storage, read from the database inside a transaction."""

    type: str
    url: str
    ssh: SshTarget | None = None


def open_backend(spec: BackendSpec) -> Backend:
    if spec.type == "LocalDir":
        return LocalDirBackend(spec.url)
    if spec.type == "Sftp" and spec.ssh is not None:
        return SftpBackend(spec.url, spec.ssh)
    raise ValueError(f"no backend for backup storage type {spec.type}")


# ---------------------------------------------------------------- local directory


def _local_unusable(url: str, exc: OSError) -> RingstackError:
    return RingstackError(
        StorageError.BACKUP_STORAGE_UNREACHABLE,
        f"cannot use directory {url}: {exc.strerror or exc}",
        details={"url": url},
    )


class _LocalWriter:
    def __init__(self, path: str) -> None:
        self.path = path
        self.part = part_path(path)
        os.makedirs(posixpath.dirname(path), exist_ok=True)
        self._file: IO[bytes] | None = open(self.part, "wb")  # noqa: SIM115 (closed in commit/abort)

    def write(self, chunk: bytes) -> None:
        assert self._file is not None
        self._file.write(chunk)

    def commit(self) -> None:
        assert self._file is not None
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        os.replace(self.part, self.path)

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.part)


class LocalDirBackend:
    def __init__(self, url: str) -> None:
        self.url = url

    def probe(self) -> Probe:
        probe_file = posixpath.join(self.url, ".ringstack-probe")
        try:
            os.makedirs(self.url, exist_ok=True)
            with open(probe_file, "wb") as f:
                f.write(b"ok")
            os.unlink(probe_file)
            st = os.statvfs(self.url)
        except OSError as exc:
            raise _local_unusable(self.url, exc) from None
        return Probe(total=st.f_blocks * st.f_frsize, free=st.f_bavail * st.f_frsize)

    def open_writer(self, path: str) -> ImageWriter:
        try:
            return _LocalWriter(path)
        except OSError as exc:
            raise _local_unusable(self.url, exc) from None

    def remove(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

    def close(self) -> None:
        pass


# ---------------------------------------------------------------- SFTP


def _missing(exc: OSError) -> bool:
    return exc.errno == errno.ENOENT or isinstance(exc, FileNotFoundError)


class _SftpWriter:
    def __init__(self, sftp: paramiko.SFTPClient, path: str) -> None:
        self.sftp = sftp
        self.path = path
        self.part = part_path(path)
        _sftp_makedirs(sftp, posixpath.dirname(path))
        self._file: paramiko.SFTPFile | None = sftp.open(self.part, "wb")
        self._file.set_pipelined(True)  # do not wait for each write's acknowledgement

    def write(self, chunk: bytes) -> None:
        assert self._file is not None
        self._file.write(chunk)

    def commit(self) -> None:
        assert self._file is not None
        self._file.close()  # waits for every pipelined write
        self._file = None
        self.sftp.posix_rename(self.part, self.path)

    def abort(self) -> None:
        try:
            if self._file is not None:
                self._file.close()
        except (OSError, paramiko.SSHException):
            pass
        self._file = None
        with contextlib.suppress(OSError, paramiko.SSHException):
            self.sftp.remove(self.part)


def _sftp_makedirs(sftp: paramiko.SFTPClient, path: str) -> None:
    current = ""
    for part in path.strip("/").split("/"):
        current = f"{current}/{part}"
        try:
            sftp.stat(current)
        except OSError as exc:
            if not _missing(exc):
                raise
            sftp.mkdir(current)


class SftpBackend:
    def __init__(self, url: str, target: SshTarget) -> None:
        self.url = url
        self.target = target
        self._client: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self.host_key: str | None = None

    def _open(self) -> paramiko.SFTPClient:
        if self._sftp is None:
            self._client, self.host_key = connect(self.target)
            try:
                self._sftp = self._client.open_sftp()
            except (paramiko.SSHException, OSError) as exc:
                self.close()
                raise unreachable(self.target, f"no SFTP: {exc}") from None
        return self._sftp

    def probe(self) -> Probe:
        sftp = self._open()
        probe_file = posixpath.join(self.url, ".ringstack-probe")
        try:
            _sftp_makedirs(sftp, self.url)
            with sftp.open(probe_file, "wb") as f:
                f.write(b"ok")
            sftp.remove(probe_file)
        except OSError as exc:
            raise unreachable(self.target, f"directory {self.url}: {exc.strerror or exc}") from None
        total, free = self._df()
        return Probe(total=total, free=free, host_key=self.host_key)

    def _df(self) -> tuple[int, int]:
        """Size and free bytes of the remote file system, from POSIX ``df -P``."""
        assert self._client is not None
        try:
            _, stdout, _ = self._client.exec_command(f"df -P -B1 {shlex.quote(self.url)}", timeout=30)
            out = stdout.read().decode("utf-8", "replace").splitlines()
            fields = out[1].split()
            return int(fields[1]), int(fields[3])
        except (paramiko.SSHException, OSError, IndexError, ValueError) as exc:
            raise unreachable(self.target, f"cannot measure {self.url} with df: {exc}") from None

    def open_writer(self, path: str) -> ImageWriter:
        sftp = self._open()
        try:
            return _SftpWriter(sftp, path)
        except OSError as exc:
            raise unreachable(self.target, f"cannot write {path}: {exc.strerror or exc}") from None

    def remove(self, path: str) -> None:
        sftp = self._open()
        try:
            sftp.remove(path)
        except OSError as exc:
            if not _missing(exc):
                raise unreachable(self.target, f"cannot remove {path}: {exc.strerror or exc}") from None

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
        self._client = None
        self._sftp = None


def backend_spec(session: Session, bs: BackupStorage) -> BackendSpec:
    """How to reach ``bs``, with its secrets; call inside a transaction, use outside it."""
    if bs.type != "Sftp":
        return BackendSpec(bs.type, bs.url)
    secret = session.get(BackupStorageSecret, bs.uuid)
    target = SshTarget(
        hostname=bs.hostname or "",
        port=bs.ssh_port or 22,
        username=bs.username or "root",
        password=secret.password if secret else None,
        private_key=secret.ssh_key if secret else None,
        host_key=secret.host_key if secret else None,
    )
    return BackendSpec(bs.type, bs.url, target)


def probe(spec: BackendSpec) -> Probe:
    """Check a backup storage once (blocking)."""
    backend = open_backend(spec)
    try:
        return backend.probe()
    finally:
        backend.close()
