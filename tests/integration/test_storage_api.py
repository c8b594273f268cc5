"""Primary and backup storage through the public API: local/NFS primary storage and its cluster
attachments, capacity reservation under concurrency, local-directory and SFTP backup storage (a
real sshd on 127.0.0.1), zone attachments, reconnect, host-key pinning."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from bus.errors import RingstackError, Sys
from mgmt.core.capacity import Capacity, release_primary_storage, reserve_primary_storage

UNKNOWN = "f" * 32
GiB = 1 << 30


async def _zone(client, name="z"):
    return (await client.api("CreateZone", {"name": name}))["inventory"]


async def _cluster(client, zone_uuid, name="c"):
    body = {"zoneUuid": zone_uuid, "name": name, "hypervisorType": "Simulator"}
    return (await client.api("CreateCluster", body))["inventory"]


async def _local_ps(client, zone_uuid, url="/var/lib/ringstack/local", total=100 * GiB, name="ps"):
    body = {"zoneUuid": zone_uuid, "name": name, "url": url, "totalCapacity": total}
    return (await client.api("AddLocalPrimaryStorage", body))["inventory"]


async def _dir_bs(client, path, **extra):
    body = {"name": "bs", "url": str(path), **extra}
    return (await client.api("AddLocalDirBackupStorage", body))["inventory"]


async def _event_log(client, pattern):
    received: asyncio.Queue = asyncio.Queue()

    async def on_event(env):
        received.put_nowait((env.name, env.body))

    await client.start_consumer(client.consume(client.topology.event_queue("test", pattern), on_event))
    return received


# ---------------------------------------------------------------- primary storage


async def test_primary_storage_round_trip(node, client):
    events = await _event_log(client, "primaryStorage.#")
    zone = await _zone(client)
    c1, c2 = await _cluster(client, zone["uuid"], "c1"), await _cluster(client, zone["uuid"], "c2")
    local = await _local_ps(client, zone["uuid"], url="/var/lib/ringstack/local/")
    assert local["type"] == "LocalStorage"
    assert local["url"] == "/var/lib/ringstack/local"  # normalised
    assert (local["totalCapacity"], local["availableCapacity"]) == (100 * GiB, 100 * GiB)
    assert (local["state"], local["status"]) == ("Enabled", "Connected")
    assert local["attachedClusterUuids"] == []
    nfs = (
        await client.api(
            "AddNfsPrimaryStorage",
            {"zoneUuid": zone["uuid"], "name": "nfs", "url": "nfs1.example.com:/exports/vm"},
        )
    )["inventory"]
    assert (nfs["type"], nfs["url"], nfs["totalCapacity"]) == ("NFS", "nfs1.example.com:/exports/vm", 0)

    async def attach(ps, cluster):
        body = {"primaryStorageUuid": ps["uuid"], "clusterUuid": cluster["uuid"]}
        return (await client.api("AttachPrimaryStorageToCluster", body))["inventory"]

    async def detach(ps, cluster):
        body = {"primaryStorageUuid": ps["uuid"], "clusterUuid": cluster["uuid"]}
        return (await client.api("DetachPrimaryStorageFromCluster", body))["inventory"]

    assert (await attach(local, c1))["attachedClusterUuids"] == [c1["uuid"]]
    assert (await attach(local, c1))["attachedClusterUuids"] == [c1["uuid"]]  # again: no-op
    assert (await attach(local, c2))["attachedClusterUuids"] == [c1["uuid"], c2["uuid"]]
    await attach(nfs, c1)
    queried = await client.api(
        "QueryPrimaryStorage", {"conditions": [{"name": "type", "op": "=", "value": "LocalStorage"}]}
    )
    assert queried["inventories"][0]["attachedClusterUuids"] == [c1["uuid"], c2["uuid"]]
    assert (await detach(local, c1))["attachedClusterUuids"] == [c2["uuid"]]
    assert (await detach(local, c1))["attachedClusterUuids"] == [c2["uuid"]]  # again: no-op

    updated = (
        await client.api("UpdatePrimaryStorage", {"uuid": local["uuid"], "name": "l2", "description": "d"})
    )["inventory"]
    assert (updated["name"], updated["description"]) == ("l2", "d")
    disabled = (
        await client.api("ChangePrimaryStorageState", {"uuid": local["uuid"], "stateEvent": "disable"})
    )["inventory"]
    assert disabled["state"] == "Disabled"

    # attached to c2: Permissive refuses, naming the attachment; Enforcing detaches and deletes
    with pytest.raises(RingstackError) as err:
        await client.api("DeletePrimaryStorage", {"uuid": local["uuid"]})
    assert err.value.code == Sys.RESOURCE_IN_USE
    assert err.value.details["children"] == {"primaryStorageClusterRef": [f"{local['uuid']}:{c2['uuid']}"]}
    await client.api("DeletePrimaryStorage", {"uuid": local["uuid"], "deleteMode": "Enforcing"})
    await client.api(
        "DetachPrimaryStorageFromCluster", {"primaryStorageUuid": nfs["uuid"], "clusterUuid": c1["uuid"]}
    )
    await client.api("DeletePrimaryStorage", {"uuid": nfs["uuid"]})
    await client.api("DeletePrimaryStorage", {"uuid": nfs["uuid"]})  # a retried delete is fine
    assert (await client.api("QueryPrimaryStorage", {"count": True}))["total"] == 0
    assert (await client.api("QueryCluster", {"count": True}))["total"] == 2  # clusters untouched

    names = [(await asyncio.wait_for(events.get(), 5))[0] for _ in range(11)]
    assert names == [
        "primaryStorage.created",
        "primaryStorage.created",
        "primaryStorage.attached",
        "primaryStorage.attached",  # the repeated attach sent none
        "primaryStorage.attached",
        "primaryStorage.detached",
        "primaryStorage.updated",
        "primaryStorage.state",
        "primaryStorage.deleted",  # the refused Permissive delete sent none
        "primaryStorage.detached",
        "primaryStorage.deleted",
    ]


async def test_primary_storage_errors(node, client):
    z1, z2 = await _zone(client, "z1"), await _zone(client, "z2")
    other_zone_cluster = await _cluster(client, z2["uuid"])
    ps = await _local_ps(client, z1["uuid"])
    with pytest.raises(RingstackError) as err:
        await client.api(
            "AttachPrimaryStorageToCluster",
            {"primaryStorageUuid": ps["uuid"], "clusterUuid": other_zone_cluster["uuid"]},
        )
    assert err.value.code == "STORAGE.ZONE_MISMATCH"
    with pytest.raises(RingstackError) as err:
        await _local_ps(client, z1["uuid"], name="again")  # same path in the same zone
    assert err.value.code == "STORAGE.URL_IN_USE"
    assert (await _local_ps(client, z2["uuid"]))["zoneUuid"] == z2["uuid"]  # another zone may
    for name, body in [
        ("AddLocalPrimaryStorage", {"zoneUuid": UNKNOWN, "name": "p", "url": "/x", "totalCapacity": 1}),
        ("AddNfsPrimaryStorage", {"zoneUuid": UNKNOWN, "name": "p", "url": "h:/x"}),
        ("AttachPrimaryStorageToCluster", {"primaryStorageUuid": ps["uuid"], "clusterUuid": UNKNOWN}),
        (
            "AttachPrimaryStorageToCluster",
            {"primaryStorageUuid": UNKNOWN, "clusterUuid": other_zone_cluster["uuid"]},
        ),
        ("DetachPrimaryStorageFromCluster", {"primaryStorageUuid": UNKNOWN, "clusterUuid": UNKNOWN}),
        ("UpdatePrimaryStorage", {"uuid": UNKNOWN, "name": "x"}),
        ("ChangePrimaryStorageState", {"uuid": UNKNOWN, "stateEvent": "enable"}),
    ]:
        with pytest.raises(RingstackError) as err:
            await client.api(name, body)
        assert err.value.code == Sys.NOT_FOUND, name


async def test_primary_storage_validation_errors_name_the_field(node, client):
    z = "a" * 32
    local = {"zoneUuid": z, "name": "p", "url": "/data", "totalCapacity": GiB}
    nfs = {"zoneUuid": z, "name": "p", "url": "nfs:/export"}
    cases = [
        ("AddLocalPrimaryStorage", {**local, "zoneUuid": "z"}, "zoneUuid"),
        ("AddLocalPrimaryStorage", {**local, "name": ""}, "name"),
        ("AddLocalPrimaryStorage", {**local, "url": "relative/path"}, "url"),
        ("AddLocalPrimaryStorage", {**local, "url": "/a/../etc"}, "url"),
        ("AddLocalPrimaryStorage", {**local, "url": "/a b"}, "url"),
        ("AddLocalPrimaryStorage", {**local, "url": "/" + "a" * 1024}, "url"),
        ("AddLocalPrimaryStorage", {k: v for k, v in local.items() if k != "totalCapacity"}, "totalCapacity"),
        ("AddLocalPrimaryStorage", {**local, "totalCapacity": 0}, "totalCapacity"),
        ("AddLocalPrimaryStorage", {**local, "totalCapacity": 1 << 61}, "totalCapacity"),
        ("AddNfsPrimaryStorage", {**nfs, "url": "/export"}, "url"),
        ("AddNfsPrimaryStorage", {**nfs, "url": "nfs:export"}, "url"),
        ("AddNfsPrimaryStorage", {**nfs, "url": "bad_host!:/export"}, "url"),
        ("AddNfsPrimaryStorage", {**nfs, "totalCapacity": -1}, "totalCapacity"),
        ("AttachPrimaryStorageToCluster", {"primaryStorageUuid": z}, "clusterUuid"),
        (
            "AttachPrimaryStorageToCluster",
            {"primaryStorageUuid": "x", "clusterUuid": z},
            "primaryStorageUuid",
        ),
        ("DetachPrimaryStorageFromCluster", {"clusterUuid": z}, "primaryStorageUuid"),
        ("UpdatePrimaryStorage", {"uuid": z, "url": "/other"}, "url"),
        ("ChangePrimaryStorageState", {"uuid": z, "stateEvent": "maintain"}, "stateEvent"),
        ("DeletePrimaryStorage", {"uuid": "x"}, "uuid"),
        ("QueryPrimaryStorage", {"sortDirection": "sideways"}, "sortDirection"),
    ]
    for name, body, field in cases:
        with pytest.raises(RingstackError) as err:
            await client.api(name, body)
        assert err.value.code == Sys.INVALID_ARGUMENT, (name, body)
        assert field in [e["field"] for e in err.value.details["errors"]], (name, body, err.value.details)
    assert (await client.api("QueryPrimaryStorage", {"count": True}))["total"] == 0


async def test_fifty_concurrent_primary_storage_reservations_never_over_commit(node, client):
    """50 threads on their own connections reserve 30 bytes each of a 1000-byte storage at the
    same moment: exactly 33 succeed, 17 get CAPACITY.PRIMARY_STORAGE_INSUFFICIENT, 10 bytes stay."""
    zone = await _zone(client)
    ps = await _local_ps(client, zone["uuid"], total=1000)
    engine = create_engine(node.config.database_url, pool_size=50, max_overflow=0)
    barrier = threading.Barrier(50)
    outcomes: list[str] = []
    lock = threading.Lock()

    def reserve() -> None:
        with Session(engine) as session:
            session.connection()  # connect first, so the 50 UPDATEs really race
            barrier.wait()
            try:
                reserve_primary_storage(session, ps["uuid"], 30)
                session.commit()
                result = "ok"
            except RingstackError as exc:
                session.rollback()
                result = exc.code
        with lock:
            outcomes.append(result)

    try:
        threads = [threading.Thread(target=reserve) for _ in range(50)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert outcomes.count("ok") == 33
        assert outcomes.count(Capacity.PRIMARY_STORAGE_INSUFFICIENT) == 17
        after = (await client.api("QueryPrimaryStorage", {}))["inventories"][0]
        assert after["availableCapacity"] == 10

        with Session(engine) as session, session.begin():
            with pytest.raises(RingstackError) as err:
                reserve_primary_storage(session, ps["uuid"], 11)
            assert err.value.details == {"uuid": ps["uuid"], "requested": 11, "available": 10}
            assert reserve_primary_storage(session, ps["uuid"], 10) == 0
            assert release_primary_storage(session, ps["uuid"], 500) == 500
            assert release_primary_storage(session, ps["uuid"], 5000) == 1000  # never above the total
            with pytest.raises(ValueError):
                reserve_primary_storage(session, ps["uuid"], -1)
            with pytest.raises(RingstackError) as err:
                release_primary_storage(session, UNKNOWN, 1)
            assert err.value.code == Sys.NOT_FOUND
    finally:
        engine.dispose()


async def test_storage_apis_are_admin_only(node, client, tmp_path):
    zone = await _zone(client)
    ps = await _local_ps(client, zone["uuid"])
    bs = await _dir_bs(client, tmp_path / "bs")
    user = await client.new_account("storage-user")
    for name, body in [
        ("AddLocalPrimaryStorage", {"zoneUuid": zone["uuid"], "name": "p", "url": "/y", "totalCapacity": 1}),
        ("AddNfsPrimaryStorage", {"zoneUuid": zone["uuid"], "name": "p", "url": "h:/y"}),
        ("UpdatePrimaryStorage", {"uuid": ps["uuid"], "name": "x"}),
        ("DeletePrimaryStorage", {"uuid": ps["uuid"]}),
        ("QueryPrimaryStorage", {}),
        ("AddLocalDirBackupStorage", {"name": "b", "url": str(tmp_path / "other")}),
        ("AttachBackupStorageToZone", {"backupStorageUuid": bs["uuid"], "zoneUuid": zone["uuid"]}),
        ("ReconnectBackupStorage", {"uuid": bs["uuid"]}),
        ("DeleteBackupStorage", {"uuid": bs["uuid"]}),
        ("QueryBackupStorage", {}),
    ]:
        with pytest.raises(RingstackError) as err:
            await user.api(name, body)
        assert err.value.code == Sys.PERMISSION_DENIED, name
    assert not (tmp_path / "other").exists()


# ---------------------------------------------------------------- local-directory backup storage


async def test_local_dir_backup_storage_round_trip(node, client, tmp_path):
    events = await _event_log(client, "backupStorage.#")
    z1, z2 = await _zone(client, "z1"), await _zone(client, "z2")
    path = tmp_path / "a" / "b"
    bs = await _dir_bs(client, path)
    assert path.is_dir()  # created
    assert list(path.iterdir()) == []  # the probe file is gone
    fs = os.statvfs(path)
    assert bs["type"] == "LocalDir"
    assert bs["totalCapacity"] == fs.f_blocks * fs.f_frsize
    assert 0 < bs["availableCapacity"] <= bs["totalCapacity"]
    assert (bs["state"], bs["status"], bs["attachedZoneUuids"]) == ("Enabled", "Connected", [])
    capped = await _dir_bs(client, tmp_path / "capped", totalCapacity=1000)
    assert (capped["totalCapacity"], capped["availableCapacity"]) == (1000, 1000)

    async def attach(zone):
        body = {"backupStorageUuid": bs["uuid"], "zoneUuid": zone["uuid"]}
        return (await client.api("AttachBackupStorageToZone", body))["inventory"]

    assert (await attach(z1))["attachedZoneUuids"] == [z1["uuid"]]
    assert (await attach(z1))["attachedZoneUuids"] == [z1["uuid"]]  # again: no-op
    assert (await attach(z2))["attachedZoneUuids"] == [z1["uuid"], z2["uuid"]]
    detached = (
        await client.api(
            "DetachBackupStorageFromZone", {"backupStorageUuid": bs["uuid"], "zoneUuid": z1["uuid"]}
        )
    )["inventory"]
    assert detached["attachedZoneUuids"] == [z2["uuid"]]
    updated = (await client.api("UpdateBackupStorage", {"uuid": bs["uuid"], "name": "b2"}))["inventory"]
    assert updated["name"] == "b2"
    disabled = (await client.api("ChangeBackupStorageState", {"uuid": bs["uuid"], "stateEvent": "disable"}))[
        "inventory"
    ]
    assert disabled["state"] == "Disabled"
    assert (await client.api("ReconnectBackupStorage", {"uuid": bs["uuid"]}))["inventory"][
        "status"
    ] == "Connected"

    # deleting a zone only detaches its backup storage, in either mode
    await client.api("DeleteZone", {"uuid": z2["uuid"]})
    found = await client.api(
        "QueryBackupStorage", {"conditions": [{"name": "name", "op": "=", "value": "b2"}]}
    )
    assert found["inventories"][0]["attachedZoneUuids"] == []

    await client.api("DeleteBackupStorage", {"uuid": bs["uuid"]})
    await client.api("DeleteBackupStorage", {"uuid": bs["uuid"]})  # a retried delete is fine
    assert path.is_dir()  # the directory is the admin's: left alone
    assert (await client.api("QueryBackupStorage", {"count": True}))["total"] == 1
    names = [(await asyncio.wait_for(events.get(), 5))[0] for _ in range(8)]
    assert names == [
        "backupStorage.created",
        "backupStorage.created",
        "backupStorage.attached",
        "backupStorage.attached",
        "backupStorage.detached",
        "backupStorage.updated",
        "backupStorage.state",
        "backupStorage.deleted",
    ]


async def test_local_dir_backup_storage_errors_and_reconnect(node, client, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_bytes(b"x")
    with pytest.raises(RingstackError) as err:
        await _dir_bs(client, blocker / "sub")  # a path under a regular file cannot be a directory
    assert err.value.code == "STORAGE.BACKUP_STORAGE_UNREACHABLE"
    assert str(blocker / "sub") in err.value.message
    assert (await client.api("QueryBackupStorage", {"count": True}))["total"] == 0  # nothing stored

    path = tmp_path / "bs"
    bs = await _dir_bs(client, path)
    with pytest.raises(RingstackError) as err:
        await _dir_bs(client, path)
    assert err.value.code == "STORAGE.URL_IN_USE"

    events = await _event_log(client, "backupStorage.*.status")
    shutil.rmtree(path)
    path.write_bytes(b"now a file")  # the storage breaks
    with pytest.raises(RingstackError) as err:
        await client.api("ReconnectBackupStorage", {"uuid": bs["uuid"]})
    assert err.value.code == "STORAGE.BACKUP_STORAGE_UNREACHABLE"
    broken = (await client.api("QueryBackupStorage", {}))["inventories"][0]
    assert broken["status"] == "Disconnected"
    assert broken["statusReason"].startswith("STORAGE.BACKUP_STORAGE_UNREACHABLE:")
    path.unlink()  # repaired (the node recreates the directory)
    fixed = (await client.api("ReconnectBackupStorage", {"uuid": bs["uuid"]}))["inventory"]
    assert fixed["status"] == "Connected"
    assert "statusReason" not in fixed
    statuses = [(await asyncio.wait_for(events.get(), 5))[1]["inventory"]["status"] for _ in range(2)]
    assert statuses == ["Disconnected", "Connected"]

    for name, body in [
        ("AttachBackupStorageToZone", {"backupStorageUuid": bs["uuid"], "zoneUuid": UNKNOWN}),
        ("AttachBackupStorageToZone", {"backupStorageUuid": UNKNOWN, "zoneUuid": UNKNOWN}),
        ("DetachBackupStorageFromZone", {"backupStorageUuid": UNKNOWN, "zoneUuid": UNKNOWN}),
        ("UpdateBackupStorage", {"uuid": UNKNOWN, "name": "x"}),
        ("ChangeBackupStorageState", {"uuid": UNKNOWN, "stateEvent": "enable"}),
        ("ReconnectBackupStorage", {"uuid": UNKNOWN}),
    ]:
        with pytest.raises(RingstackError) as err:
            await client.api(name, body)
        assert err.value.code == Sys.NOT_FOUND, name


async def test_backup_storage_validation_errors_name_the_field(node, client):
    b = "a" * 32
    sftp = {"name": "s", "hostname": "bs1", "url": "/bs", "password": "pw"}
    cases = [
        ("AddLocalDirBackupStorage", {"name": "b"}, "url"),
        ("AddLocalDirBackupStorage", {"name": "b", "url": "bs"}, "url"),
        ("AddLocalDirBackupStorage", {"name": "b", "url": "/x/./y"}, "url"),
        ("AddLocalDirBackupStorage", {"name": "b", "url": "/x", "totalCapacity": 0}, "totalCapacity"),
        ("AddLocalDirBackupStorage", {"url": "/x"}, "name"),
        ("AddLocalDirBackupStorage", {"name": "b", "url": "/x", "hostname": "h"}, "hostname"),
        ("AddSftpBackupStorage", {**sftp, "hostname": "-bad-"}, "hostname"),
        ("AddSftpBackupStorage", {k: v for k, v in sftp.items() if k != "hostname"}, "hostname"),
        ("AddSftpBackupStorage", {k: v for k, v in sftp.items() if k != "password"}, "(body)"),
        ("AddSftpBackupStorage", {**sftp, "sshKey": "k"}, "(body)"),
        ("AddSftpBackupStorage", {**sftp, "sshPort": 70000}, "sshPort"),
        ("AddSftpBackupStorage", {**sftp, "username": "a b"}, "username"),
        ("AddSftpBackupStorage", {**sftp, "url": "~/bs"}, "url"),
        ("AttachBackupStorageToZone", {"backupStorageUuid": b}, "zoneUuid"),
        ("DetachBackupStorageFromZone", {"backupStorageUuid": b, "zoneUuid": "z"}, "zoneUuid"),
        ("UpdateBackupStorage", {"uuid": b, "url": "/y"}, "url"),
        ("ChangeBackupStorageState", {"uuid": b, "stateEvent": "on"}, "stateEvent"),
        ("ReconnectBackupStorage", {}, "uuid"),
        ("DeleteBackupStorage", {"uuid": b, "deleteMode": "enforcing"}, "deleteMode"),
        ("QueryBackupStorage", {"count": "many"}, "count"),
    ]
    for name, body, field in cases:
        with pytest.raises(RingstackError) as err:
            await client.api(name, body)
        assert err.value.code == Sys.INVALID_ARGUMENT, (name, body)
        assert field in [e["field"] for e in err.value.details["errors"]], (name, body, err.value.details)
    assert (await client.api("QueryBackupStorage", {"count": True}))["total"] == 0


# ---------------------------------------------------------------- SFTP backup storage, real sshd


class Sshd:
    """An OpenSSH server on 127.0.0.1 with its own config, keys and port; root logs in by key."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.host_key = root / "hostkey"
        self.client_key = root / "client"
        for key in (self.host_key, self.client_key):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        (root / "authorized_keys").write_text((root / "client.pub").read_text())
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        config = self.root / "sshd_config"
        config.write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {self.host_key}\nPidFile {self.root}/sshd.pid\n"
            f"AuthorizedKeysFile {self.root}/authorized_keys\nStrictModes no\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nUsePAM no\n"
            "Subsystem sftp internal-sftp\nLogLevel QUIET\n"
        )
        os.makedirs("/run/sshd", exist_ok=True)  # its privilege-separation directory
        log = open(self.root / "sshd.log", "ab")  # noqa: SIM115 (closed with the process)
        self.proc = subprocess.Popen(
            ["/usr/sbin/sshd", "-D", "-e", "-f", str(config)], stdout=log, stderr=log
        )
        log.close()
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise AssertionError(
                        f"sshd did not start: {(self.root / 'sshd.log').read_text()}"
                    ) from None
                time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None

    def new_host_key(self) -> None:
        self.host_key.unlink()
        self.host_key.with_suffix(".pub").unlink()
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.host_key)], check=True)


@pytest.fixture
def sshd(tmp_path):
    server = Sshd(tmp_path / "sshd")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _sftp_body(sshd: Sshd, url: Path, **extra):
    return {
        "name": "sftp",
        "hostname": "127.0.0.1",
        "sshPort": sshd.port,
        "username": "root",
        "sshKey": sshd.client_key.read_text(),
        "url": str(url),
        **extra,
    }


async def test_sftp_backup_storage_over_real_ssh(node, client, sshd, tmp_path):
    url = tmp_path / "remote" / "bs"
    bs = (await client.api("AddSftpBackupStorage", _sftp_body(sshd, url)))["inventory"]
    assert url.is_dir()  # created over SFTP
    assert (bs["type"], bs["hostname"], bs["sshPort"], bs["username"]) == (
        "Sftp",
        "127.0.0.1",
        sshd.port,
        "root",
    )
    assert bs["status"] == "Connected"
    fs = os.statvfs(url)
    assert bs["totalCapacity"] == fs.f_blocks * fs.f_frsize  # measured with df over SSH
    assert "sshKey" not in bs and "BEGIN" not in repr(bs)

    # an image imported onto it lands there, whole, with nothing half-written beside it
    payload = os.urandom(3 * (1 << 20) + 17)
    source = tmp_path / "disk.raw"
    source.write_bytes(payload)
    image = (
        await client.api(
            "AddImage",
            {"name": "img", "url": f"file://{source}", "format": "raw", "backupStorageUuids": [bs["uuid"]]},
            timeout=30,
        )
    )["inventory"]
    ready = image
    assert ready["status"] == "Ready", ready
    assert ready["sha256"] == hashlib.sha256(payload).hexdigest()
    stored = url / "images" / f"{image['uuid']}.raw"
    assert ready["backupStorageRefs"][0]["installPath"] == str(stored)
    assert stored.read_bytes() == payload
    assert sorted(p.name for p in (url / "images").iterdir()) == [stored.name]
    after = (await client.api("QueryBackupStorage", {}))["inventories"][0]
    assert after["availableCapacity"] == bs["availableCapacity"] - len(payload)
    await client.api("DeleteImage", {"uuid": image["uuid"]})
    await client.api("ExpungeImage", {"uuid": image["uuid"]})
    assert not stored.exists()  # removed over SFTP

    # the host key is pinned: a server presenting another one is refused
    sshd.stop()
    sshd.new_host_key()
    sshd.start()
    with pytest.raises(RingstackError) as err:
        await client.api("ReconnectBackupStorage", {"uuid": bs["uuid"]})
    assert err.value.code == "STORAGE.HOST_KEY_MISMATCH"
    broken = (await client.api("QueryBackupStorage", {}))["inventories"][0]
    assert broken["status"] == "Disconnected"


async def test_sftp_backup_storage_that_cannot_be_reached_is_not_added(node, client, sshd, tmp_path):
    other_key = tmp_path / "other"
    keygen = ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other_key)]
    await asyncio.to_thread(subprocess.run, keygen, check=True)
    with pytest.raises(RingstackError) as err:
        await client.api(
            "AddSftpBackupStorage", _sftp_body(sshd, tmp_path / "x", sshKey=other_key.read_text())
        )
    assert err.value.code == "STORAGE.BACKUP_STORAGE_UNREACHABLE"
    assert "authentication failed" in err.value.message
    with pytest.raises(RingstackError) as err:
        await client.api(
            "AddSftpBackupStorage", _sftp_body(sshd, tmp_path / "x", password="wrong", sshKey=None)
        )
    assert err.value.code == "STORAGE.BACKUP_STORAGE_UNREACHABLE"
    with pytest.raises(RingstackError) as err:
        await client.api("AddSftpBackupStorage", _sftp_body(sshd, tmp_path / "x", sshKey="not a key"))
    assert err.value.code == "STORAGE.BACKUP_STORAGE_UNREACHABLE"
    assert "private key" in err.value.message
    sshd.stop()
    with pytest.raises(RingstackError) as err:
        await client.api("AddSftpBackupStorage", _sftp_body(sshd, tmp_path / "x"))
    assert err.value.code == "STORAGE.BACKUP_STORAGE_UNREACHABLE"
    assert not (tmp_path / "x").exists()
    assert (await client.api("QueryBackupStorage", {"count": True}))["total"] == 0
