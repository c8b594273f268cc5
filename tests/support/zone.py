"""Building a whole zone through the public API, on simulated hosts: what VM tests start from."""

from __future__ import annotations

import uuid as uuidlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GiB = 1 << 30


@dataclass
class SimZone:
    zone: str
    cluster: str
    hosts: list[str]
    primary_storage: str
    backup_storage: str
    image: str
    offering: str
    l2: str
    l3: str
    extra: dict[str, Any] = field(default_factory=dict)


async def build_zone(
    client: Any,
    tmp: Path,
    *,
    hosts: int = 2,
    host_cpu: int = 8,
    host_memory: int = 16 * GiB,
    storage: int = 1 << 40,
    cidr: str = "10.20.0.0/22",
    offering_cpu: int = 1,
    offering_memory: int = GiB,
    host_ip_prefix: str = "127.2",
) -> SimZone:
    """Zone, Simulator cluster, simulated hosts, local primary storage, a local-dir backup storage
    with a small raw image, an instance offering, an L2 attached to the cluster and an L3 with a
    range. Needs a simulator serving the namespace (the ``simulator`` fixture)."""
    api = client.api
    zone = (await api("CreateZone", {"name": "zone"}))["inventory"]["uuid"]
    cluster = (
        await api("CreateCluster", {"zoneUuid": zone, "name": "cluster", "hypervisorType": "Simulator"})
    )["inventory"]["uuid"]
    host_uuids = []
    for i in range(hosts):
        host = await api(
            "AddSimulatorHost",
            {
                "clusterUuid": cluster,
                "name": f"host-{i}",
                "managementIp": f"{host_ip_prefix}.{i // 250}.{i % 250 + 1}",
                "totalCpu": host_cpu,
                "totalMemorySize": host_memory,
            },
        )
        assert host["inventory"]["status"] == "Connected", host
        host_uuids.append(host["inventory"]["uuid"])
    ps_dir = tmp / f"ps-{uuidlib.uuid4().hex[:6]}"
    ps_dir.mkdir()
    ps = (
        await api(
            "AddLocalPrimaryStorage",
            {"zoneUuid": zone, "name": "ps", "url": str(ps_dir), "totalCapacity": storage},
        )
    )["inventory"]["uuid"]
    await api("AttachPrimaryStorageToCluster", {"primaryStorageUuid": ps, "clusterUuid": cluster})
    bs_dir = tmp / f"bs-{uuidlib.uuid4().hex[:6]}"
    bs_dir.mkdir()
    bs = (await api("AddLocalDirBackupStorage", {"name": "bs", "url": str(bs_dir)}))["inventory"]["uuid"]
    await api("AttachBackupStorageToZone", {"backupStorageUuid": bs, "zoneUuid": zone})
    image_file = tmp / "image.raw"
    if not image_file.exists():
        image_file.write_bytes(b"\0" * (1 << 20))
    image = (
        await api(
            "AddImage",
            {"name": "image", "url": f"file://{image_file}", "format": "raw", "backupStorageUuids": [bs]},
            timeout=60,
        )
    )["inventory"]
    assert image["status"] == "Ready", image
    offering = (
        await api(
            "CreateInstanceOffering", {"name": "small", "cpuNum": offering_cpu, "memorySize": offering_memory}
        )
    )["inventory"]["uuid"]
    l2 = (await api("CreateL2NoVlanNetwork", {"zoneUuid": zone, "name": "l2", "physicalInterface": "eth0"}))[
        "inventory"
    ]["uuid"]
    await api("AttachL2NetworkToCluster", {"l2NetworkUuid": l2, "clusterUuid": cluster})
    l3 = (await api("CreateL3Network", {"l2NetworkUuid": l2, "name": "l3"}))["inventory"]["uuid"]
    await api("AddIpRangeByNetworkCidr", {"l3NetworkUuid": l3, "name": "range", "networkCidr": cidr})
    return SimZone(zone, cluster, host_uuids, ps, bs, image["uuid"], offering, l2, l3)


def vm_request(z: SimZone, name: str = "vm", **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "instanceOfferingUuid": z.offering,
        "imageUuid": z.image,
        "l3NetworkUuids": [z.l3],
        **extra,
    }


async def add_vr_offering(
    client: Any, z: SimZone, *, public: str | None = None, public_cidr: str = "198.51.100.0/24"
) -> str:
    """A public L3 (or ``public``, an existing one), a management L3 and the zone's default
    virtual-router offering, so that L3s taking services from the VirtualRouter provider get a VR
    (``z.extra``: public, mgmt)."""
    api = client.api
    if public is None:
        public = (
            await api("CreateL3Network", {"l2NetworkUuid": z.l2, "name": "public", "category": "Public"})
        )["inventory"]["uuid"]
        await api(
            "AddIpRangeByNetworkCidr", {"l3NetworkUuid": public, "name": "pub", "networkCidr": public_cidr}
        )
    mgmt = (await api("CreateL3Network", {"l2NetworkUuid": z.l2, "name": "mgmt", "category": "Private"}))[
        "inventory"
    ]["uuid"]
    await api("AddIpRangeByNetworkCidr", {"l3NetworkUuid": mgmt, "name": "m", "networkCidr": "10.99.0.0/24"})
    offering = (
        await api(
            "CreateVirtualRouterOffering",
            {
                "name": "vr",
                "zoneUuid": z.zone,
                "imageUuid": z.image,
                "managementNetworkUuid": mgmt,
                "publicNetworkUuid": public,
                "cpuNum": 1,
                "memorySize": 256 << 20,
                "isDefault": True,
            },
        )
    )["inventory"]["uuid"]
    z.extra.update(public=public, mgmt=mgmt, vr_offering=offering)
    return offering
