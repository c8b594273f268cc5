"""Streaming an image from its source onto backup storage (blocking; runs in a worker thread).

One read of the source feeds every target at once; md5 and sha256 are computed on the way, the
size is bounded, and the first bytes are checked against the declared format. Every target is
written under a temporary name and renamed only when all bytes arrived and passed the checks;
on any failure all partial (and already renamed) files are removed, so nothing half-written
stays on a backup storage.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass

from bus.errors import RingstackError
from mgmt.services.image.errors import ImageError
from mgmt.services.image.source import ImportFailure, open_source
from mgmt.services.storage.backends import Backend, BackendSpec, ImageWriter, open_backend

log = logging.getLogger(__name__)

CHUNK = 1 << 20
HEADER = 64 * 1024  # enough for the qcow2 header and the ISO 9660 volume descriptor
QCOW2_MAGIC = b"QFI\xfb"
ISO_MAGIC_OFFSET = 0x8001
ISO_MAGIC = b"CD001"


class Cancel(threading.Event):
    """Set (from any thread) to stop an import: at the next chunk, or at once when the source
    is a stalled network read (the source is interrupted). ``reason`` is the failure's message."""

    reason = "the import was cancelled"

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._interrupt: Callable[[], None] | None = None

    def cancel(self, reason: str) -> None:
        with self._lock:
            self.reason = reason
            self.set()
            interrupt = self._interrupt
        if interrupt is not None:
            interrupt()

    def watch(self, interrupt: Callable[[], None] | None) -> None:
        """Interrupt with this on cancel (None: stop watching); at once if already cancelled."""
        with self._lock:
            self._interrupt = interrupt
            cancelled = self.is_set()
        if cancelled and interrupt is not None:
            interrupt()


@dataclass(frozen=True)
class Target:
    backup_storage_uuid: str
    spec: BackendSpec
    path: str


@dataclass(frozen=True)
class ImportJob:
    image_uuid: str
    url: str
    format: str
    targets: tuple[Target, ...]
    limit: int  # bytes
    md5sum: str | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class ImportResult:
    actual_size: int  # bytes stored
    size: int  # virtual size for qcow2, else the bytes
    md5sum: str
    sha256: str


def check_format(fmt: str, header: bytes, total: int) -> int:
    """The image's virtual size, or ImportFailure when the bytes are not of format ``fmt``."""
    is_qcow2 = header[:4] == QCOW2_MAGIC
    if fmt == "qcow2":
        if not is_qcow2 or len(header) < 32:
            raise ImportFailure(
                ImageError.FORMAT_MISMATCH, "format is qcow2 but the file has no qcow2 header"
            )
        return int(struct.unpack(">Q", header[24:32])[0])
    if is_qcow2:
        raise ImportFailure(ImageError.FORMAT_MISMATCH, f"format is {fmt} but the file is a qcow2 image")
    if fmt == "iso" and header[ISO_MAGIC_OFFSET : ISO_MAGIC_OFFSET + 5] != ISO_MAGIC:
        raise ImportFailure(ImageError.FORMAT_MISMATCH, "format is iso but the file is no ISO 9660 image")
    return total


def _too_large(limit: int) -> ImportFailure:
    return ImportFailure(
        ImageError.TOO_LARGE, f"the image is larger than {limit} bytes (size limit or free backup storage)"
    )


def _store_failed(exc: RingstackError) -> ImportFailure:
    return ImportFailure(ImageError.STORE_FAILED, f"{exc.code}: {exc.message}")


def run_import(job: ImportJob, abort: Cancel) -> ImportResult:
    """Copy the image onto every target, or onto none."""
    backends: list[Backend] = []
    writers: list[tuple[Backend, Target, ImageWriter]] = []
    committed: list[tuple[Backend, Target]] = []
    try:
        for target in job.targets:
            backend = open_backend(target.spec)
            backends.append(backend)
            writers.append((backend, target, backend.open_writer(target.path)))
        result = _copy(job, [w for _, _, w in writers], abort)
        for backend, target, writer in writers:
            writer.commit()
            committed.append((backend, target))
        return result
    except BaseException as exc:
        for _, _, writer in writers:
            writer.abort()
        for backend, target in committed:
            _remove_quietly(backend, target)
        if isinstance(exc, RingstackError):
            raise _store_failed(exc) from None
        if isinstance(exc, OSError):
            raise ImportFailure(ImageError.STORE_FAILED, f"writing the image failed: {exc}") from None
        raise
    finally:
        for backend in backends:
            backend.close()


def _copy(job: ImportJob, writers: list[ImageWriter], abort: Cancel) -> ImportResult:
    source = open_source(job.url)
    abort.watch(source.interrupt)
    try:
        if source.length is not None and source.length > job.limit:
            raise _too_large(job.limit)
        md5, sha256 = hashlib.md5(usedforsecurity=False), hashlib.sha256()
        header = b""
        total = 0
        while True:
            if abort.is_set():
                raise ImportFailure(ImageError.DOWNLOAD_INTERRUPTED, abort.reason)
            try:
                chunk = source.stream.read(CHUNK)
            except (OSError, http.client.HTTPException) as exc:
                if abort.is_set():
                    raise ImportFailure(ImageError.DOWNLOAD_INTERRUPTED, abort.reason) from None
                raise ImportFailure(
                    ImageError.SOURCE_UNREACHABLE, f"reading {job.url} failed: {exc}"
                ) from None
            if not chunk:
                break
            total += len(chunk)
            if total > job.limit:
                raise _too_large(job.limit)
            if len(header) < HEADER:
                header += chunk[: HEADER - len(header)]
            md5.update(chunk)
            sha256.update(chunk)
            for writer in writers:
                writer.write(chunk)
    finally:
        abort.watch(None)
        source.close()
    if abort.is_set():  # an interrupted read may look like the end of the stream
        raise ImportFailure(ImageError.DOWNLOAD_INTERRUPTED, abort.reason)
    if source.length is not None and total != source.length:
        raise ImportFailure(
            ImageError.SOURCE_UNREACHABLE, f"{job.url} ended after {total} of {source.length} bytes"
        )
    _verify(job, md5.hexdigest(), sha256.hexdigest())
    size = check_format(job.format, header, total)
    return ImportResult(actual_size=total, size=size, md5sum=md5.hexdigest(), sha256=sha256.hexdigest())


def _verify(job: ImportJob, md5: str, sha256: str) -> None:
    for name, expected, actual in (("md5", job.md5sum, md5), ("sha256", job.sha256, sha256)):
        if expected is not None and expected.lower() != actual:
            raise ImportFailure(
                ImageError.CHECKSUM_MISMATCH, f"{name} of the bytes received is {actual}, {expected} expected"
            )


def _remove_quietly(backend: Backend, target: Target) -> None:
    try:
        backend.remove(target.path)
    except (RingstackError, OSError) as exc:
        log.warning(
            "could not remove %s from backup storage %s: %s", target.path, target.backup_storage_uuid, exc
        )


def remove_copies(targets: list[Target]) -> list[str]:
    """Delete image files (blocking); returns the errors met, one line each."""
    errors: list[str] = []
    for target in targets:
        backend = open_backend(target.spec)
        try:
            backend.remove(target.path)
        except RingstackError as exc:
            errors.append(f"backup storage {target.backup_storage_uuid}: {exc.message}")
        except OSError as exc:
            errors.append(f"backup storage {target.backup_storage_uuid}: {exc}")
        finally:
            backend.close()
    return errors
