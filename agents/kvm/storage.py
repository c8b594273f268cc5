"""Volumes on primary storage: local (a directory on the host; a shared mount point is one too,
mounted by the operator on every host) and NFS (an export the agent mounts).

Layout under a primary storage's root (the directory, or the mount point of the export)::

    .ringstack-primary-storage   marker: this tree is ringstack's (deletes are refused elsewhere)
    imagecache/<image uuid>      the image, fetched once from backup storage (file:// or http://)
    volumes/<volume uuid>.qcow2  volumes; a root volume is a qcow2 overlay on the cached image

Everything here blocks (copies, downloads, ``qemu-img``, ``mount``); the agent runs it in its pool.
Each step is idempotent and atomic: files are written under a temporary name and renamed, so an
existing file is always a complete one, and a repeated create finds it and stops there.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import threading
import urllib.parse
import urllib.request
from pathlib import Path

from bus.errors import RingstackError, Sys
from schema.agent import AgentErrors, CreateVolumeCommand, DeleteVolumeCommand, VolumeReply

log = logging.getLogger(__name__)

MARKER = ".ringstack-primary-storage"
_VOLUME_FILE = re.compile(r"^[0-9a-f]{32}\.qcow2$")


def storage_error(message: str, **details: object) -> RingstackError:
    return RingstackError(AgentErrors.HYPERVISOR_ERROR, message, details=details)


def run(argv: list[str], *, timeout: float = 120) -> str:
    """Run a command; a failure is an error naming the command and what it printed."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError:
        raise storage_error(f"{argv[0]} is not installed on this host", command=argv[0]) from None
    except subprocess.TimeoutExpired:
        raise storage_error(f"{' '.join(argv)} did not finish within {timeout} s", command=argv[0]) from None
    if done.returncode != 0:
        raise storage_error(
            f"{' '.join(argv)} failed: {done.stderr.strip() or done.stdout.strip()}",
            command=argv[0],
            exitCode=done.returncode,
        )
    return done.stdout


def image_info(path: Path) -> dict[str, object]:
    info = json.loads(run(["qemu-img", "info", "--output=json", str(path)]))
    if not isinstance(info, dict):
        raise storage_error(f"qemu-img info {path} printed no object")
    return info


class Storage:
    def __init__(self, mount_dir: str, *, download_timeout: float = 600) -> None:
        self.mount_dir = Path(mount_dir)
        self.download_timeout = download_timeout
        self._image_locks: dict[Path, threading.Lock] = {}
        self._locks_lock = threading.Lock()

    # ------------------------------------------------------------------ roots

    def root(self, cmd: CreateVolumeCommand) -> Path:
        root = self._root_path(cmd.primary_storage_type, cmd.primary_storage_url)
        if root is None:
            root = self._mount_nfs(cmd.primary_storage_uuid, cmd.primary_storage_url)
        for sub in ("imagecache", "volumes"):
            (root / sub).mkdir(parents=True, exist_ok=True, mode=0o755)
        marker = root / MARKER
        if not marker.exists():
            marker.write_text(cmd.primary_storage_uuid + "\n")
        return root

    def _root_path(self, ps_type: str, url: str) -> Path | None:
        """A local or shared-mount-point storage's root; None for NFS (mounted by its uuid)."""
        # A shared mount point is a directory the operator mounted on every host: local to the agent.
        if ps_type not in ("LocalStorage", "SharedMountPoint"):
            return None
        root = Path(url)
        if not root.is_absolute():
            raise RingstackError(
                Sys.INVALID_ARGUMENT,
                f"local primary storage url must be an absolute directory, not {url!r}",
            )
        return root

    def _mount_nfs(self, ps_uuid: str, url: str) -> Path:
        if not re.match(r"^[^:/\s]+:/\S*$", url):
            raise RingstackError(Sys.INVALID_ARGUMENT, f"NFS url must be host:/export, not {url!r}")
        mount_point = self.mount_dir / ps_uuid
        mount_point.mkdir(parents=True, exist_ok=True)
        if not os.path.ismount(mount_point):
            run(["mount", "-t", "nfs", "-o", "vers=4.1,soft,timeo=100", url, str(mount_point)], timeout=60)
        return mount_point

    # ------------------------------------------------------------------ volumes

    def create_volume(self, cmd: CreateVolumeCommand) -> VolumeReply:
        root = self.root(cmd)
        path = root / "volumes" / f"{cmd.volume_uuid}.qcow2"
        changed = not path.exists()
        if changed:
            if cmd.image_uuid is None:
                if cmd.size <= 0:
                    raise RingstackError(Sys.INVALID_ARGUMENT, "a data volume needs a size above 0")
                self._create_qcow2(path, cmd.size, None)
            else:
                if not cmd.image_url:
                    raise RingstackError(Sys.INVALID_ARGUMENT, "a root volume needs imageUrl with imageUuid")
                base = self.cached_image(root, cmd.image_uuid, cmd.image_url)
                self._create_qcow2(path, cmd.size, base)
        return VolumeReply(install_path=str(path), actual_size=_allocated(path), changed=changed)

    def _create_qcow2(self, path: Path, size: int, base: Path | None) -> None:
        tmp = path.with_name(f".{path.name}.part-{os.getpid()}-{threading.get_ident()}")
        argv = ["qemu-img", "create", "-q", "-f", "qcow2"]
        if base is not None:
            info = image_info(base)
            virtual = int(str(info.get("virtual-size", 0)))
            argv += ["-b", str(base), "-F", str(info.get("format", "raw"))]
            size = max(size, virtual)  # never smaller than the image: that would cut the disk
        argv += [str(tmp), str(size)]
        try:
            run(argv)
            tmp.chmod(0o644)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def delete_volume(self, cmd: DeleteVolumeCommand) -> bool:
        """Delete by path or, when the create's answer never came, by uuid on its storage
        (``DeleteVolumeCommand``); whether there was a file to delete."""
        if cmd.install_path:
            install_path = cmd.install_path
        else:
            if cmd.primary_storage_type is None or cmd.primary_storage_url is None:
                raise RingstackError(
                    Sys.INVALID_ARGUMENT, "a volume delete by uuid needs its primary storage's type and url"
                )
            root = self._root_path(cmd.primary_storage_type, cmd.primary_storage_url)
            if root is None:  # NFS: where its create mounted it; not mounted, nothing was made
                root = self.mount_dir / (cmd.primary_storage_uuid or "-")
                if not os.path.ismount(root):
                    return False
            install_path = str(root / "volumes" / f"{cmd.volume_uuid}.qcow2")
            if not (root / MARKER).exists():
                return False  # the storage was never initialised here: no create ran
        path = Path(install_path)
        if not (
            path.is_absolute()
            and _VOLUME_FILE.match(path.name)
            and path.parent.name == "volumes"
            and (path.parent.parent / MARKER).exists()
        ):
            raise RingstackError(
                Sys.INVALID_ARGUMENT,
                f"{install_path!r} is not a volume of a ringstack primary storage; nothing deleted",
            )
        if not path.exists():
            return False
        path.unlink(missing_ok=True)
        return True

    # ------------------------------------------------------------------ image cache

    def cached_image(self, root: Path, image_uuid: str, url: str) -> Path:
        """The image in this primary storage's cache, fetched at most once per host (and per
        storage: an NFS cache is shared by every host that mounts the export)."""
        target = root / "imagecache" / image_uuid
        with self._lock_for(target):
            if target.exists():
                return target
            tmp = target.with_name(f".{image_uuid}.part-{os.getpid()}-{threading.get_ident()}")
            try:
                self._fetch(url, tmp)
                image_info(tmp)  # a broken download is refused here, not at VM start
                tmp.chmod(0o644)
                os.replace(tmp, target)
            finally:
                tmp.unlink(missing_ok=True)
        return target

    def _lock_for(self, path: Path) -> threading.Lock:
        with self._locks_lock:
            return self._image_locks.setdefault(path, threading.Lock())

    def _fetch(self, url: str, dest: Path) -> None:
        parsed = urllib.parse.urlparse(url)
        if parsed.scheme == "file":
            source = Path(urllib.parse.unquote(parsed.path))
            if not source.is_file():
                raise storage_error(f"image {url} does not exist on this host", url=url)
            shutil.copyfile(source, dest)
            return
        if parsed.scheme not in ("http", "https"):
            raise RingstackError(
                Sys.INVALID_ARGUMENT, f"image url scheme must be file, http or https: {url!r}"
            )
        try:
            with (
                urllib.request.urlopen(url, timeout=self.download_timeout) as response,
                dest.open("wb") as out,
            ):
                shutil.copyfileobj(response, out, 1 << 20)
        except OSError as exc:  # URLError, HTTPError and socket errors are OSErrors
            raise storage_error(f"downloading image {url} failed: {exc}", url=url) from None


def _allocated(path: Path) -> int:
    return path.stat().st_blocks * 512
