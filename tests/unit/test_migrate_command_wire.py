"""``MigrateVmCommand.storageShared`` is an optional addition to agent protocol 1: left off the wire
unless true, so an agent that predates it (unknown fields are refused) takes every other migration."""

from __future__ import annotations

from schema.agent import MigrateVmCommand

BASE = {
    "host_uuid": "a" * 32,
    "vm_uuid": "b" * 32,
    "destination_host_uuid": "c" * 32,
    "destination_uri": "qemu+tcp://10.0.0.2/system",
}


def test_storage_shared_is_on_the_wire_only_when_true() -> None:
    assert "storageShared" not in MigrateVmCommand(**BASE).to_wire()
    wire = MigrateVmCommand(**BASE, storage_shared=True).to_wire()
    assert wire["storageShared"] is True
    assert MigrateVmCommand.from_wire(wire).storage_shared is True
    assert MigrateVmCommand.from_wire(MigrateVmCommand(**BASE).to_wire()).storage_shared is None
