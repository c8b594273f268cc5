"""Host facts for ``agent.connect``: CPUs, memory, CPU model, libvirt and QEMU versions, OS."""

from __future__ import annotations

import platform
import socket
import xml.etree.ElementTree as ET
from importlib import metadata
from pathlib import Path

import libvirt

from schema.agent import HostFacts


def agent_version() -> str:
    try:
        return f"ringstack-kvm-agent/{metadata.version('ringstack')}"
    except metadata.PackageNotFoundError:
        return "ringstack-kvm-agent/unknown"


def _version(number: int) -> str:
    """libvirt encodes versions as major * 1,000,000 + minor * 1,000 + release."""
    return f"{number // 1_000_000}.{number // 1000 % 1000}.{number % 1000}"


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return f"{platform.system()} {platform.release()}"


def _cpuinfo_model() -> str:
    """The CPU's marketing name, when libvirt names no model (the test driver, some hosts)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def collect(conn: libvirt.virConnect, domain_type: str) -> HostFacts:
    """Blocking: run in the hypervisor's pool."""
    _model, memory_mib, cpus, *_ = conn.getInfo()
    cpu_model = ET.fromstring(conn.getCapabilities()).findtext("host/cpu/model") or _cpuinfo_model()
    qemu_version = _version(conn.getVersion()) if conn.getType() == "QEMU" else None
    return HostFacts(
        hypervisor="kvm" if domain_type == "kvm" else "qemu",
        cpu_num=max(1, int(cpus)),
        cpu_model=cpu_model,
        memory_size=int(memory_mib) << 20,
        hostname=socket.gethostname(),
        os=_os_name(),
        libvirt_version=_version(conn.getLibVersion()),
        qemu_version=qemu_version,
    )
