"""Images through the public API: real imports from file:// and from an HTTP server on 127.0.0.1
onto local-directory backup storage; checksums, formats, size limits; failures that leave nothing
half-written; delete/recover/expunge; cancellation; ownership across accounts."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http.server
import os
import struct
import threading
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session

from bus.errors import RingstackError, Sys
from schema.db.identity import SharedResource
from tests.support.cluster import until

UNKNOWN = "f" * 32
MiB = 1 << 20
GiB = 1 << 30


class ImageServer:
    """An HTTP server on 127.0.0.1 serving files from a directory:
    ``/files/<name>`` (with Content-Length), ``/nolength/<name>`` (without: read to the end),
    ``/slow/<name>`` (sends 1 MiB, then waits for ``release`` before the rest); others 404."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.started = threading.Event()
        self.release = threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                kind, _, name = self.path.strip("/").partition("/")
                path = server.root / name
                if kind not in ("files", "nolength", "slow") or not name or not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                self.send_response(200)
                if kind != "nolength":
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if kind == "slow":
                    self.wfile.write(data[:MiB])
                    self.wfile.flush()
                    server.started.set()
                    server.release.wait(10)
                    data = data[MiB:]
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(data)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, kind: str, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{kind}/{name}"

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def files(tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    return root


@pytest.fixture
def http_server(files):
    server = ImageServer(files)
    try:
        yield server
    finally:
        server.close()


def qcow2_bytes(virtual_size: int, body: int = 300_000) -> bytes:
    """A file that starts like a qcow2 image (magic, version 3, virtual size at offset 24)."""
    header = b"QFI\xfb" + struct.pack(">I", 3) + b"\0" * 16 + struct.pack(">Q", virtual_size)
    return header + os.urandom(body)


def iso_bytes() -> bytes:
    data = bytearray(os.urandom(40_000))
    data[0x8001 : 0x8001 + 5] = b"CD001"
    return bytes(data)


async def _dir_bs(client, path, **extra):
    return (await client.api("AddLocalDirBackupStorage", {"name": "bs", "url": str(path), **extra}))[
        "inventory"
    ]


async def _add(client, url, bs_uuids, fmt="raw", **extra):
    """AddImage answers when the import is over, with the Ready image."""
    body = {"name": "img", "url": url, "format": fmt, "backupStorageUuids": bs_uuids, **extra}
    return (await client.api("AddImage", body, timeout=30))["inventory"]


async def _image(client, uuid):
    found = await client.api("QueryImage", {"conditions": [{"name": "uuid", "op": "=", "value": uuid}]})
    return found["inventories"][0] if found["inventories"] else None


def _read(path: str | Path) -> bytes:
    return Path(path).read_bytes()


def _stored(bs_path: Path) -> list[str]:
    images = bs_path / "images"
    return sorted(p.name for p in images.iterdir()) if images.exists() else []


async def _available(client, bs_uuid):
    found = await client.api(
        "QueryBackupStorage", {"conditions": [{"name": "uuid", "op": "=", "value": bs_uuid}]}
    )
    return found["inventories"][0]["availableCapacity"]


# ---------------------------------------------------------------- successful imports


async def test_import_from_a_file_url(node, client, files, tmp_path):
    received: asyncio.Queue = asyncio.Queue()

    async def on_event(env):
        received.put_nowait((env.name, env.body))

    await client.start_consumer(client.consume(client.topology.event_queue("test", "image.#"), on_event))
    payload = os.urandom(2 * MiB + 123)
    (files / "disk.raw").write_bytes(payload)
    bs_path = tmp_path / "bs"
    bs = await _dir_bs(client, bs_path, totalCapacity=10 * MiB)

    image = await _add(
        client,
        f"file://{files / 'disk.raw'}",
        [bs["uuid"]],
        md5Sum=hashlib.md5(payload).hexdigest().upper(),  # either case
        guestOsType="Debian 12",
        platform="Linux",
    )
    ready = image
    assert ready["status"] == "Ready", ready
    assert (ready["size"], ready["actualSize"]) == (len(payload), len(payload))
    assert ready["md5Sum"] == hashlib.md5(payload).hexdigest()
    assert ready["sha256"] == hashlib.sha256(payload).hexdigest()
    assert (ready["state"], ready["mediaType"], ready["guestOsType"]) == (
        "Enabled",
        "RootVolumeTemplate",
        "Debian 12",
    )
    ref = ready["backupStorageRefs"][0]
    assert ref == {
        "backupStorageUuid": bs["uuid"],
        "installPath": str(bs_path / "images" / f"{image['uuid']}.raw"),
        "status": "Ready",
    }
    assert _read(ref["installPath"]) == payload
    assert _stored(bs_path) == [f"{image['uuid']}.raw"]  # no temporary file left
    assert await _available(client, bs["uuid"]) == 10 * MiB - len(payload)

    events = [await asyncio.wait_for(received.get(), 5) for _ in range(2)]
    assert [(n, b["inventory"]["status"]) for n, b in events] == [
        ("image.created", "Downloading"),  # visible while the bytes are copied
        ("image.status", "Ready"),
    ]
    assert events[0][1]["inventory"]["backupStorageRefs"][0]["status"] == "Downloading"


async def test_import_over_http_onto_two_backup_storages(node, client, http_server, files, tmp_path):
    data = qcow2_bytes(virtual_size=10 * GiB)
    (files / "disk.qcow2").write_bytes(data)
    (files / "cd.iso").write_bytes(iso_bytes())
    b1, b2 = await _dir_bs(client, tmp_path / "b1"), await _dir_bs(client, tmp_path / "b2")
    image = await _add(
        client,
        http_server.url("files", "disk.qcow2"),
        [b1["uuid"], b2["uuid"]],
        "qcow2",
        sha256=hashlib.sha256(data).hexdigest(),
    )
    ready = image
    assert ready["status"] == "Ready", ready
    assert (ready["size"], ready["actualSize"]) == (10 * GiB, len(data))  # virtual size from the header
    assert sorted(r["backupStorageUuid"] for r in ready["backupStorageRefs"]) == sorted(
        [b1["uuid"], b2["uuid"]]
    )
    for path in (tmp_path / "b1", tmp_path / "b2"):
        assert (path / "images" / f"{image['uuid']}.qcow2").read_bytes() == data
        assert _stored(path) == [f"{image['uuid']}.qcow2"]

    # without a Content-Length the stream is read to its end
    iso = await _add(client, http_server.url("nolength", "cd.iso"), [b1["uuid"]], "iso", mediaType="ISO")
    done = iso
    assert (done["status"], done["format"], done["mediaType"]) == ("Ready", "iso", "ISO")
    assert done["actualSize"] == (files / "cd.iso").stat().st_size


# ---------------------------------------------------------------- failed imports


async def test_failed_imports_end_in_error_and_leave_nothing(node, client, http_server, files, tmp_path):
    raw = os.urandom(5000)
    (files / "disk.raw").write_bytes(raw)
    (files / "disk.qcow2").write_bytes(qcow2_bytes(GiB))
    (files / "big.raw").write_bytes(os.urandom(3 * MiB))
    big_path, small_path = tmp_path / "big", tmp_path / "small"
    big = await _dir_bs(client, big_path, totalCapacity=100 * MiB)
    small = await _dir_bs(client, small_path, totalCapacity=1 * MiB)
    with socket_port() as closed_port:
        refused = f"http://127.0.0.1:{closed_port}/x.raw"
    cases = [
        (http_server.url("files", "missing.raw"), "raw", [big], {}, "IMAGE.SOURCE_UNREACHABLE", "404"),
        (refused, "raw", [big], {}, "IMAGE.SOURCE_UNREACHABLE", "refused"),
        (f"file://{files / 'missing.raw'}", "raw", [big], {}, "IMAGE.SOURCE_UNREACHABLE", "No such file"),
        (f"file://{files}", "raw", [big], {}, "IMAGE.SOURCE_UNREACHABLE", "not a regular file"),
        (
            f"file://remotehost{files / 'disk.raw'}",
            "raw",
            [big],
            {},
            "IMAGE.SOURCE_UNREACHABLE",
            "local path",
        ),
        (
            http_server.url("files", "disk.raw"),
            "raw",
            [big],
            {"md5Sum": "0" * 32},
            "IMAGE.CHECKSUM_MISMATCH",
            "md5",
        ),
        (
            http_server.url("files", "disk.raw"),
            "raw",
            [big],
            {"sha256": "0" * 64},
            "IMAGE.CHECKSUM_MISMATCH",
            "sha256",
        ),
        (http_server.url("files", "disk.raw"), "qcow2", [big], {}, "IMAGE.FORMAT_MISMATCH", "qcow2 header"),
        (http_server.url("files", "disk.qcow2"), "raw", [big], {}, "IMAGE.FORMAT_MISMATCH", "is a qcow2"),
        (
            http_server.url("files", "disk.raw"),
            "iso",
            [big],
            {"mediaType": "ISO"},
            "IMAGE.FORMAT_MISMATCH",
            "ISO",
        ),
        # over the free capacity: refused from the Content-Length, and while streaming without one
        (http_server.url("files", "big.raw"), "raw", [small], {}, "IMAGE.TOO_LARGE", "larger than"),
        (http_server.url("nolength", "big.raw"), "raw", [small], {}, "IMAGE.TOO_LARGE", "larger than"),
        # all or nothing: one storage too small fails the copy on both
        (http_server.url("nolength", "big.raw"), "raw", [big, small], {}, "IMAGE.TOO_LARGE", "larger than"),
    ]
    for url, fmt, targets, extra, code, needle in cases:
        with pytest.raises(RingstackError) as err:
            await _add(client, url, [t["uuid"] for t in targets], fmt, **extra)
        assert err.value.code == code, (url, err.value)
        assert needle in err.value.message, (url, err.value.message)
        failed = await _image(client, err.value.details["uuid"])  # kept, in Error, saying why
        assert failed["status"] == "Error", (url, failed)
        assert failed["statusReason"].startswith(code + ":"), (url, failed["statusReason"])
        assert needle in failed["statusReason"], (url, failed["statusReason"])
        assert failed["backupStorageRefs"] == []
        assert _stored(big_path) == [] and _stored(small_path) == [], url  # not even a temporary file
    assert await _available(client, big["uuid"]) == 100 * MiB
    assert await _available(client, small["uuid"]) == MiB


async def test_the_size_limit_of_the_node_applies(node, client, files, tmp_path):
    (files / "disk.raw").write_bytes(os.urandom(4096))
    bs = await _dir_bs(client, tmp_path / "bs")
    service = next(s for s in node.services if s.name == "image")
    service.max_image_size = 4095
    with pytest.raises(RingstackError) as err:
        await _add(client, f"file://{files / 'disk.raw'}", [bs["uuid"]])
    assert err.value.code == "IMAGE.TOO_LARGE"
    assert (await _image(client, err.value.details["uuid"]))["statusReason"].startswith("IMAGE.TOO_LARGE:")
    service.max_image_size = 4096
    ok = await _add(client, f"file://{files / 'disk.raw'}", [bs["uuid"]])
    assert ok["status"] == "Ready"


class socket_port:
    """A port on 127.0.0.1 with nothing listening (bound, then closed)."""

    def __enter__(self) -> int:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    def __exit__(self, *exc) -> None:
        return None


async def test_add_image_refusals_create_nothing(node, client, tmp_path):
    bs = await _dir_bs(client, tmp_path / "bs")
    with pytest.raises(RingstackError) as err:
        await _add(client, "http://127.0.0.1:1/x", [UNKNOWN])
    assert err.value.code == Sys.NOT_FOUND
    await client.api("ChangeBackupStorageState", {"uuid": bs["uuid"], "stateEvent": "disable"})
    with pytest.raises(RingstackError) as err:
        await _add(client, "http://127.0.0.1:1/x", [bs["uuid"]])
    assert err.value.code == "IMAGE.BACKUP_STORAGE_NOT_AVAILABLE"
    assert "Disabled" in err.value.message
    assert (await client.api("QueryImage", {"count": True}))["total"] == 0


async def test_image_validation_errors_name_the_field(node, client):
    b = ["a" * 32]
    ok = {"name": "i", "url": "http://h/x.qcow2", "format": "qcow2", "backupStorageUuids": b}
    cases = [
        ("AddImage", {**ok, "url": "ftp://h/x.qcow2"}, "url"),
        ("AddImage", {**ok, "url": "s3://bucket/x"}, "url"),
        ("AddImage", {**ok, "url": "/local/path"}, "url"),
        ("AddImage", {**ok, "url": "http://h/x y"}, "url"),
        ("AddImage", {**ok, "url": "http://" + "a" * 2048}, "url"),
        ("AddImage", {**ok, "format": "vmdk"}, "format"),
        ("AddImage", {**ok, "mediaType": "Kernel"}, "mediaType"),
        ("AddImage", {**ok, "platform": "BeOS"}, "platform"),
        ("AddImage", {**ok, "mediaType": "ISO"}, "(body)"),
        ("AddImage", {**ok, "format": "iso"}, "(body)"),
        ("AddImage", {**ok, "backupStorageUuids": []}, "backupStorageUuids"),
        ("AddImage", {**ok, "backupStorageUuids": b + b}, "(body)"),
        ("AddImage", {**ok, "backupStorageUuids": ["x"]}, "backupStorageUuids.0"),
        ("AddImage", {**ok, "backupStorageUuids": [f"{i:032x}" for i in range(9)]}, "backupStorageUuids"),
        ("AddImage", {**ok, "md5Sum": "xyz"}, "md5Sum"),
        ("AddImage", {**ok, "sha256": "a" * 63}, "sha256"),
        ("AddImage", {**ok, "name": ""}, "name"),
        ("AddImage", {**ok, "guestOsType": ""}, "guestOsType"),
        ("AddImage", {**ok, "system": "maybe"}, "system"),
        ("AddImage", {**ok, "size": 5}, "size"),
        ("UpdateImage", {"uuid": b[0], "format": "raw"}, "format"),
        ("UpdateImage", {"uuid": b[0], "platform": "Amiga"}, "platform"),
        ("ChangeImageState", {"uuid": b[0], "stateEvent": "hide"}, "stateEvent"),
        ("DeleteImage", {"uuid": "nope"}, "uuid"),
        ("RecoverImage", {}, "uuid"),
        ("ExpungeImage", {"uuid": b[0], "force": True}, "force"),
        ("QueryImage", {"fields": "name"}, "fields"),
    ]
    for name, body, field in cases:
        with pytest.raises(RingstackError) as err:
            await client.api(name, body)
        assert err.value.code == Sys.INVALID_ARGUMENT, (name, body)
        assert field in [e["field"] for e in err.value.details["errors"]], (name, body, err.value.details)
    assert (await client.api("QueryImage", {"count": True}))["total"] == 0


# ---------------------------------------------------------------- lifecycle


async def test_update_state_delete_recover_expunge(node, client, files, tmp_path):
    payload = os.urandom(100_000)
    (files / "d.raw").write_bytes(payload)
    bs_path = tmp_path / "bs"
    bs = await _dir_bs(client, bs_path, totalCapacity=MiB)
    image = await _add(client, f"file://{files / 'd.raw'}", [bs["uuid"]])
    uuid = image["uuid"]
    stored = Path(image["backupStorageRefs"][0]["installPath"])

    updated = (
        await client.api(
            "UpdateImage",
            {"uuid": uuid, "name": "n2", "platform": "Windows", "guestOsType": "Win 11", "system": True},
        )
    )["inventory"]
    assert (updated["name"], updated["platform"], updated["guestOsType"], updated["system"]) == (
        "n2",
        "Windows",
        "Win 11",
        True,
    )
    assert (await client.api("ChangeImageState", {"uuid": uuid, "stateEvent": "disable"}))["inventory"][
        "state"
    ] == "Disabled"

    for name in ("ExpungeImage", "RecoverImage"):
        with pytest.raises(RingstackError) as err:
            await client.api(name, {"uuid": uuid})
        assert err.value.code == "IMAGE.INVALID_STATUS", name
        assert "Ready" in err.value.message

    await client.api("DeleteImage", {"uuid": uuid})
    await client.api("DeleteImage", {"uuid": uuid})  # again: fine
    deleted = await _image(client, uuid)
    assert deleted["status"] == "Deleted"
    assert _read(stored) == payload  # kept until expunged
    assert (await client.api("RecoverImage", {"uuid": uuid}))["inventory"]["status"] == "Ready"

    await client.api("DeleteImage", {"uuid": uuid})
    await client.api("ExpungeImage", {"uuid": uuid})
    assert _stored(bs_path) == []
    assert await _available(client, bs["uuid"]) == MiB  # capacity given back
    assert (await client.api("QueryImage", {"count": True}))["total"] == 0
    await client.api("ExpungeImage", {"uuid": uuid})  # gone: fine
    await client.api("DeleteImage", {"uuid": uuid})
    for name, body in [
        ("UpdateImage", {"uuid": uuid, "name": "x"}),
        ("ChangeImageState", {"uuid": uuid, "stateEvent": "enable"}),
        ("RecoverImage", {"uuid": uuid}),
    ]:
        with pytest.raises(RingstackError) as err:
            await client.api(name, body)
        assert err.value.code == Sys.NOT_FOUND, name


async def test_cancel_job_stops_an_import_and_removes_its_partial_file(
    node, client, http_server, files, tmp_path
):
    (files / "slow.raw").write_bytes(os.urandom(4 * MiB))
    bs_path = tmp_path / "bs"
    bs = await _dir_bs(client, bs_path)
    uuid = "1" * 32
    body = {
        "resourceUuid": uuid,
        "name": "slow",
        "url": http_server.url("slow", "slow.raw"),
        "format": "raw",
        "backupStorageUuids": [bs["uuid"]],
    }
    adding = asyncio.create_task(client.api("AddImage", body, timeout=30))
    await until(http_server.started.is_set, 10, "the download to start")
    await until(lambda: _stored(bs_path) != [], 10, "the temporary file")
    assert _stored(bs_path) == [f".{uuid}.raw.part"]
    assert (await _image(client, uuid))["status"] == "Downloading"
    jobs = await client.api("QueryJob", {"conditions": [{"name": "resourceUuid", "op": "=", "value": uuid}]})
    [job] = jobs["inventories"]
    assert job["state"] == "running"
    # the server stays stalled: the cancel interrupts the blocked read itself
    assert (await client.api("CancelJob", {"uuid": job["uuid"]}))["state"] == "cancelling"
    with pytest.raises(RingstackError) as err:
        await adding
    assert err.value.code == Sys.CANCELLED
    assert not http_server.release.is_set()
    assert _stored(bs_path) == []  # the partial file is gone, and no complete one appeared
    image = await _image(client, uuid)
    assert image["status"] == "Error"
    assert image["statusReason"].startswith("IMAGE.DOWNLOAD_INTERRUPTED:")
    assert image["backupStorageRefs"] == []
    assert await _available(client, bs["uuid"]) == bs["availableCapacity"]
    await client.api("DeleteImage", {"uuid": uuid})
    await client.api("ExpungeImage", {"uuid": uuid})
    assert (await client.api("QueryImage", {"count": True}))["total"] == 0


async def test_an_import_cut_by_a_node_stop_is_finished_by_the_next_node(
    node_config, client, http_server, files, tmp_path
):
    """The first node stops (a short drain) in the middle of an import; the request is a durable
    job, so the node that takes over runs it again, and the client's call ends with the image Ready."""
    from mgmt.node import ManagementNode

    payload = os.urandom(4 * MiB)
    (files / "slow.raw").write_bytes(payload)
    bs_path = tmp_path / "bs"
    first = ManagementNode(node_config.model_copy(update={"drain_timeout": 0.3}))
    await first.start()
    second = None
    try:
        bs = await _dir_bs(client, bs_path)
        uuid = "2" * 32
        body = {
            "resourceUuid": uuid,
            "name": "slow",
            "url": http_server.url("slow", "slow.raw"),
            "format": "raw",
            "backupStorageUuids": [bs["uuid"]],
        }
        adding = asyncio.create_task(client.api("AddImage", body, timeout=60))
        await until(http_server.started.is_set, 10, "the download to start")
        await first.stop()  # the drain times out; the import is cut off and cleans up
        await until(lambda: _stored(bs_path) == [], 10, "the partial file to go")
        assert not adding.done()
        http_server.release.set()  # from now on the server answers in full
        second = ManagementNode(node_config)
        await second.start()
        image = (await asyncio.wait_for(adding, 50))["inventory"]
        assert image["status"] == "Ready"
        assert image["sha256"] == hashlib.sha256(payload).hexdigest()
        assert _stored(bs_path) == [f"{uuid}.raw"]
        assert (bs_path / "images" / f"{uuid}.raw").read_bytes() == payload
        assert await _available(client, bs["uuid"]) == bs["availableCapacity"] - len(payload)
    finally:
        if second is not None:
            await second.stop()
        await first.stop()


# ---------------------------------------------------------------- accounts


async def test_images_belong_to_their_account(node, client, http_server, files, tmp_path):
    (files / "d.raw").write_bytes(os.urandom(10_000))
    bs = await _dir_bs(client, tmp_path / "bs")
    alice = await client.new_account("alice")
    bob = await client.new_account("bob")

    with pytest.raises(RingstackError) as err:  # file:// reads the node's files: admins only
        await alice.api(
            "AddImage",
            {"name": "i", "url": "file:///etc/hostname", "format": "raw", "backupStorageUuids": [bs["uuid"]]},
        )
    assert err.value.code == "IMAGE.URL_NOT_ALLOWED"
    mine = (
        await alice.api(
            "AddImage",
            {
                "name": "i",
                "url": http_server.url("files", "d.raw"),
                "format": "raw",
                "backupStorageUuids": [bs["uuid"]],
            },
        )
    )["inventory"]
    assert mine["status"] == "Ready"

    assert [i["uuid"] for i in (await alice.api("QueryImage", {}))["inventories"]] == [mine["uuid"]]
    assert (await bob.api("QueryImage", {}))["inventories"] == []
    for name, body in [
        ("UpdateImage", {"uuid": mine["uuid"], "name": "x"}),
        ("ChangeImageState", {"uuid": mine["uuid"], "stateEvent": "disable"}),
        ("DeleteImage", {"uuid": mine["uuid"]}),
        ("RecoverImage", {"uuid": mine["uuid"]}),
    ]:
        with pytest.raises(RingstackError) as err:
            await bob.api(name, body)
        assert err.value.code == Sys.NOT_FOUND, name  # bob cannot even tell it exists

    # shared with everyone: bob sees it, but may not change it
    await alice.api("ShareResource", {"resourceUuids": [mine["uuid"]], "toPublic": True})
    assert [i["uuid"] for i in (await bob.api("QueryImage", {}))["inventories"]] == [mine["uuid"]]
    with pytest.raises(RingstackError) as err:
        await bob.api("DeleteImage", {"uuid": mine["uuid"]})
    assert err.value.code == Sys.PERMISSION_DENIED
    # the admin sees and manages every account's images
    assert (await client.api("UpdateImage", {"uuid": mine["uuid"], "name": "by-admin"}))["inventory"][
        "name"
    ] == "by-admin"
    await alice.api("DeleteImage", {"uuid": mine["uuid"]})
    assert (await client.api("QueryImage", {}))["inventories"][0]["status"] == "Deleted"
    assert [i["status"] for i in (await bob.api("QueryImage", {}))["inventories"]] == [
        "Deleted"
    ]  # recoverable
    await alice.api("ExpungeImage", {"uuid": mine["uuid"]})
    assert (await bob.api("QueryImage", {}))["inventories"] == []
    engine = create_engine(node.config.database_url)
    try:
        with Session(engine) as session:
            stmt = select(func.count()).where(SharedResource.resource_uuid == mine["uuid"])
            assert session.scalar(stmt) == 0  # the sharing went with the image
    finally:
        engine.dispose()
