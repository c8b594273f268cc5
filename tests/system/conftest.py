"""Fixtures every system test module shares: the real libvirtd and the tiny TCG guest."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.system.guest import Guest, Libvirtd, build_guest, ensure_libvirtd


@pytest.fixture(scope="module")
def libvirtd() -> Iterator[Libvirtd]:
    """The machine's libvirtd, or one started in a namespace of its own when none runs."""
    daemon = ensure_libvirtd()
    try:
        yield daemon
    finally:
        daemon.close()


@pytest.fixture(scope="module")
def guest() -> Guest:
    """Debian's kernel with a busybox initramfs, and a disk image that boots them (cached)."""
    return build_guest()
