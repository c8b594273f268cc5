"""The typed contexts of the operations on an existing VM (``lifecycle.VmOp``): what the begin
transaction reads for the agent steps, and what those steps learn for the end transaction."""

from __future__ import annotations

from dataclasses import dataclass, field

from mgmt.services.vm.lifecycle import VmOp
from schema.agent import L2Spec, NicSpec, VmSpec, VolumeSpec

StorageType = str  # "LocalStorage", "NFS", "SharedMountPoint"


@dataclass
class StartVm(VmOp):
    spec: VmSpec | None = None


@dataclass
class Migration(VmOp):
    destination: str = ""
    destination_uri: str = ""  # the destination libvirt's, which the source's libvirtd reaches
    l2s: list[L2Spec] = field(default_factory=list)  # bridges to make at the destination first
    storage_shared: bool = False  # every volume on NFS or a shared mount point


@dataclass
class AttachVolume(VmOp):
    """Attach (creating its file first when it has none yet) or detach a data volume."""

    volume_uuid: str = ""
    size: int = 0
    install_path: str | None = None
    device_id: int = 1
    storage: tuple[str, str, str] | None = None  # (uuid, url, type) of the storage to create it on
    volume_host: str | None = None  # the host its file is made on
    running: bool = False  # the VM runs: the agent plugs it in now

    def spec(self) -> VolumeSpec:
        return VolumeSpec(
            uuid=self.volume_uuid,
            install_path=self.install_path or "",
            size=self.size,
            device_id=self.device_id,
            type="Data",
        )


@dataclass
class NicOp(VmOp):
    """Attach a NIC on an L3 network, or detach one."""

    nic_uuid: str = ""
    spec: NicSpec | None = None
    running: bool = False

    @property
    def nic(self) -> NicSpec:
        assert self.spec is not None
        return self.spec
