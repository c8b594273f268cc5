"""A tiny bootable guest made at test time, and a real libvirtd for the slow tier.

The guest is Debian's cloud kernel (``apt-get download``, unpacked with ``dpkg-deb -x``) and an
initramfs written here: a static busybox, the ``button`` and ``evdev`` modules of that kernel, and an
``/init`` that

- powers off when the ACPI power button is pressed (a graceful stop, ``virsh shutdown``),
- powers off when a line ``poweroff`` arrives on its serial console (a shutdown from inside),
- prints ``RINGSTACK-GUEST-READY`` once it listens for both, and what made it power off.

Two ways to boot it: the kernel and initrd given to QEMU directly (``Guest.kernel``/``initrd`` with
the blank ``Guest.image`` as disk), or ``Guest.disk``, a raw disk image that boots by itself, as an
image added through the API must: a FAT "superfloppy" (no partition table) made without a loop
mount (``mkfs.fat -C``, files copied in with ``mcopy``), with SYSLINUX's boot sector and loader
(``syslinux --install`` works on the unmounted image) booting the same kernel and initrd, its
menu and the kernel's console on the serial port.

Nothing comes from beyond Debian's package registry. The result is cached under /var/tmp, keyed by
the kernel package, the init script and the boot configuration, so a rerun boots the cached files
at once.

libvirtd: used if one already runs; otherwise started (with virtlogd and virtlockd) inside a network
namespace of its own, so the taps and bridges of real guests never touch the machine's network, and
stopped again at the end of the session.
"""

from __future__ import annotations

import contextlib
import grp
import hashlib
import os
import shutil
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.system.kvmsupport import Netns, sh, wait_until

CACHE = Path("/var/tmp/ringstack-guest")
KERNEL_META = "linux-image-cloud-amd64"  # Debian's kernel for VMs: a third of linux-image-amd64's size

INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
insmod /lib/modules/evdev.ko
insmod /lib/modules/button.ko
acpi=0
n=0
while [ "$acpi" = 0 ] && [ "$n" -lt 50 ]; do
  for dev in /sys/class/input/event*; do
    if grep -qs "Power Button" "$dev/device/name"; then
      acpi=1
      ( head -c 24 "/dev/input/${dev##*/}" >/dev/null
        echo "RINGSTACK-GUEST-POWEROFF acpi"; sleep 0.3; poweroff -f ) &
    fi
  done
  n=$((n + 1))
  [ "$acpi" = 0 ] && sleep 0.1
done
echo "RINGSTACK-GUEST-READY acpi=$acpi"
while true; do
  while read -r line; do
    case "$line" in
      poweroff*) echo "RINGSTACK-GUEST-POWEROFF console"; sleep 0.3; poweroff -f ;;
    esac
  done </dev/ttyS0
done
"""


KERNEL_ARGS = "console=ttyS0 panic=-1 quiet"
SYSLINUX_CFG = f"""SERIAL 0 115200
DEFAULT guest
PROMPT 0
TIMEOUT 0
LABEL guest
  LINUX /vmlinuz
  INITRD /initrd.img
  APPEND {KERNEL_ARGS}
"""
MiB = 1 << 20


@dataclass(frozen=True)
class Guest:
    kernel: Path
    initrd: Path
    image: Path  # a small qcow2 to overlay root volumes on (the guest boots from its initrd)
    disk: Path  # a raw disk that boots by itself (BIOS -> SYSLINUX -> the kernel and initrd)
    kernel_args: str = KERNEL_ARGS


def _apt_candidate_kernel() -> str:
    for attempt in range(2):
        out = sh("apt-cache", "depends", KERNEL_META, check=False).stdout
        for raw in out.splitlines():
            line = raw.strip()
            if line.startswith("Depends: linux-image-"):
                return line.split(": ", 1)[1]
        if attempt == 0:  # a fresh machine may have no package lists yet
            sh("apt-get", "update", "-qq", timeout=300)
    raise AssertionError(f"apt knows no {KERNEL_META}; cannot make the test guest")


def _newc(entries: list[tuple[str, int, bytes, int]]) -> bytes:
    """A cpio archive in the kernel's initramfs format ("newc"); entries are (name, mode, data,
    rdev). Written here so device nodes need no mknod and no cpio binary is needed."""
    out = bytearray()

    def add(name: str, mode: int, data: bytes, rdev: int, ino: int) -> None:
        encoded = name.encode() + b"\0"
        fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev >> 8, rdev & 0xFF, len(encoded), 0]
        out.extend(b"070701" + b"".join(b"%08x" % f for f in fields) + encoded)
        out.extend(b"\0" * (-len(out) % 4))
        out.extend(data)
        out.extend(b"\0" * (-len(out) % 4))

    for ino, (name, mode, data, rdev) in enumerate(entries, start=1):
        add(name, mode, data, rdev, ino)
    add("TRAILER!!!", 0, b"", 0, 0)
    return bytes(out)


def build_guest() -> Guest:
    package = _apt_candidate_kernel()
    key = f"{package}-{hashlib.sha256((INIT + SYSLINUX_CFG).encode()).hexdigest()[:10]}"
    target = CACHE / key
    guest = Guest(target / "vmlinuz", target / "initrd.img", target / "image.qcow2", target / "disk.raw")
    if target.exists():  # made complete, then renamed into place
        return guest
    CACHE.mkdir(parents=True, exist_ok=True)
    CACHE.chmod(0o755)
    with tempfile.TemporaryDirectory(prefix="build-", dir=CACHE) as tmp:
        work = Path(tmp)
        subprocess.run(
            ["apt-get", "download", "-qq", package, "busybox-static"],
            cwd=work,
            check=True,
            capture_output=True,
            timeout=600,
        )
        for deb in work.glob("*.deb"):
            sh("dpkg-deb", "-x", str(deb), str(work / "x"))
        (version,) = [p.name for p in (work / "x/lib/modules").iterdir()]
        modules = work / "x/lib/modules" / version / "kernel/drivers"
        gzip = subprocess.run(
            ["gzip", "-1", "-n"],
            input=_newc(
                [
                    ("bin", 0o40755, b"", 0),
                    ("dev", 0o40755, b"", 0),
                    ("dev/console", 0o20600, b"", (5 << 8) | 1),
                    ("proc", 0o40755, b"", 0),
                    ("sys", 0o40755, b"", 0),
                    ("lib", 0o40755, b"", 0),
                    ("lib/modules", 0o40755, b"", 0),
                    ("bin/busybox", 0o100755, (work / "x/bin/busybox").read_bytes(), 0),
                    ("lib/modules/button.ko", 0o100644, (modules / "acpi/button.ko").read_bytes(), 0),
                    ("lib/modules/evdev.ko", 0o100644, (modules / "input/evdev.ko").read_bytes(), 0),
                    ("init", 0o100755, INIT.encode(), 0),
                ]
            ),
            capture_output=True,
            check=True,
        )
        build = work / "guest"
        build.mkdir(mode=0o755)
        (build / "initrd.img").write_bytes(gzip.stdout)
        shutil.copyfile(work / "x/boot" / f"vmlinuz-{version}", build / "vmlinuz")
        sh("qemu-img", "create", "-q", "-f", "qcow2", str(build / "image.qcow2"), "64M")
        _bootable_disk(build / "disk.raw", build / "vmlinuz", build / "initrd.img", work)
        for path in build.iterdir():
            path.chmod(0o644)  # libvirt's qemu user must read them
        os.replace(build, target)
    return guest


def _bootable_disk(disk: Path, kernel: Path, initrd: Path, work: Path) -> None:
    """A FAT16 superfloppy holding the kernel and initrd, made bootable by SYSLINUX; no mounts."""
    config = work / "syslinux.cfg"
    config.write_text(SYSLINUX_CFG)
    # FAT16 (SYSLINUX refuses a FAT12 of many clusters): 16 MiB at least, room to spare.
    size = max(16 * MiB, kernel.stat().st_size + initrd.stat().st_size + 8 * MiB)
    sh("mkfs.fat", "-C", "-F", "16", "-n", "RSGUEST", str(disk), str(-(-size // 1024)))
    sh("mcopy", "-i", str(disk), str(kernel), str(initrd), str(config), "::")
    sh("syslinux", "--install", str(disk))


# ---------------------------------------------------------------------- libvirtd


@dataclass
class Libvirtd:
    netns: str | None  # the network namespace libvirtd (and so every guest's tap) lives in
    started: list[int]  # pids of the daemons this session started, to stop at the end
    own_netns: Netns | None = None

    def close(self) -> None:
        for pid in self.started:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 15)
        for pid in self.started:
            wait_until(lambda pid=pid: not Path(f"/proc/{pid}").exists(), 30, f"daemon {pid} to exit")
        if self.own_netns is not None:
            self.own_netns.close()


def _pid(name: str) -> int | None:
    try:
        pid = int(Path(f"/run/{name}.pid").read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if Path(f"/proc/{pid}").exists() else None


def _answers() -> bool:
    return sh("virsh", "-c", "qemu:///system", "version", check=False, timeout=30).returncode == 0


def _kvm_node() -> Path | None:
    """A /dev/kvm node with Debian's permissions (root:kvm 0660), for libvirtd's own mount namespace.

    Without udev (containers, CI) /dev/kvm is root's only: libvirt then finds KVM "not usable" by
    its qemu user, yet its probe of QEMU (as root) found KVM, so it throws away its capability cache
    and probes QEMU again on every call (about 50 s per domain definition). Giving libvirtd the
    node with the distribution's permissions, bound over /dev/kvm in its private mount namespace
    only, keeps the machine's own /dev as it is. Guests run TCG (domain type qemu) either way.
    """
    if not Path("/dev/kvm").exists():
        return None
    node = CACHE / "kvm"
    if not node.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        kvm = os.stat("/dev/kvm")
        os.mknod(node, 0o660 | stat.S_IFCHR, kvm.st_rdev)
        os.chown(node, 0, grp.getgrnam("kvm").gr_gid)
        node.chmod(0o660)
    return node


def ensure_libvirtd() -> Libvirtd:
    running = _pid("libvirtd")
    if running is not None and _answers():
        netns = sh("ip", "netns", "identify", str(running), check=False).stdout.strip() or None
        return Libvirtd(netns, [])
    ns = Netns("rsvirt")
    started: list[int] = []
    node = _kvm_node()
    for daemon in ("virtlogd", "virtlockd", "libvirtd"):
        if _pid(daemon) is None:
            if daemon == "libvirtd" and node is not None:
                ns.run("sh", "-c", f"mount --bind {node} /dev/kvm && exec libvirtd -d")
            else:
                ns.run(daemon, "-d")
            started.append(wait_until(lambda d=daemon: _pid(d), 30, f"{daemon} to write its pid file"))
    deadline = time.monotonic() + 90
    while not _answers():
        if time.monotonic() > deadline:
            raise AssertionError("libvirtd did not answer on qemu:///system within 90 s")
        time.sleep(0.3)
    return Libvirtd(ns.name, started, ns)
