"""No VM stays in a transitional state: work that lost its ownership is resumed (never recorded
as failed with its undo "left to the next owner"), and a VM left in a transitional state with no
job acting on it is found by its owner and settled, or by an operator (GetStuckResources,
SettleVmInstance)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import text

from bus.errors import RingstackError
from mgmt.services.vm.create import VmInstantiateExtension
from mgmt.services.vm.plan import CreatePlan
from tests.support.cluster import until
from tests.support.zone import build_zone, vm_request


def _node(config: Any) -> Any:
    from mgmt.node import ManagementNode

    return ManagementNode(config)


@pytest.fixture
async def quiet_node(node_config) -> AsyncIterator[Any]:
    """A node that looks for stuck VMs only on takeover (its periodic scan is an hour away)."""
    node = _node(node_config.model_copy(update={"stuck_scan_interval": 3600}))
    await node.start()
    try:
        yield node
    finally:
        await node.stop()


@pytest.fixture
async def scanning_node(node_config) -> AsyncIterator[Any]:
    node = _node(node_config.model_copy(update={"stuck_scan_interval": 0.5}))
    await node.start()
    try:
        yield node
    finally:
        await node.stop()


class LoseTheLeaseOnce(VmInstantiateExtension):
    """The first create to reach network services finds the node's lease lapsed under it and an
    agent call failing (what a broker outage did to a node whose lease watchdog watched the broker)."""

    def __init__(self, node: Any) -> None:
        self.node = node
        self.calls = 0

    async def pre_instantiate(self, plan: CreatePlan) -> None:
        self.calls += 1
        if self.calls == 1:
            self.node.cluster.ownership.renewed(time.monotonic() - 1000)
            raise RingstackError(
                "SYS.CONNECTION_LOST", "the broker connection was lost with the call in flight"
            )


async def test_a_create_that_loses_its_ownership_mid_flow_is_resumed_not_failed(
    quiet_node, client, simulator, tmp_path
):
    hook = LoseTheLeaseOnce(quiet_node)
    quiet_node.extensions.register(VmInstantiateExtension, hook)
    zone = await build_zone(client, tmp_path, hosts=1)
    vm = (await client.api("CreateVmInstance", vm_request(zone), timeout=60))["inventory"]
    assert vm["state"] == "Running"
    assert hook.calls == 2  # the first run gave up its undo, the resumed one created the VM
    with quiet_node.db.session() as s:
        jobs = s.execute(text("SELECT state, attempts, error FROM job WHERE name = 'CreateVmInstance'")).all()
        assert [(state, error) for state, _, error in jobs] == [("succeeded", None)]
        assert jobs[0][1] >= 2
        host = s.execute(text("SELECT total_cpu - available_cpu FROM host")).scalar()
        assert host == 1
        assert s.execute(text("SELECT count(*) FROM volume")).scalar() == 1
        assert s.execute(text("SELECT count(*) FROM used_ip")).scalar() == 1
    sim = simulator.hosts[zone.hosts[0]]
    assert list(sim.vms) == [vm["uuid"]] and len(sim.volumes) == 1


def _sql(node: Any, statement: str, **params: Any) -> list[Any]:
    with node.db.session() as s, s.begin():
        result = s.execute(text(statement), params)
        return list(result.all()) if result.returns_rows else []


async def _strand(node: Any, simulator: Any, zone: Any, client: Any) -> dict[str, str]:
    """Three running VMs, then each left as the bugs left them: an unfinished create (its job
    failed with its undo left to the next owner), a stop whose job died after the host did
    nothing, and a start whose VM the host does not run."""
    vms = [
        (await client.api("CreateVmInstance", vm_request(zone, f"vm{i}"), timeout=60))["inventory"]["uuid"]
        for i in range(3)
    ]
    created, stopping, starting = vms

    def strand() -> None:
        with node.db.session() as s, s.begin():
            s.execute(text("UPDATE vm_instance SET state = 'Starting' WHERE uuid = :u"), {"u": created})
            s.execute(
                text("UPDATE volume SET status = 'Creating' WHERE vm_instance_uuid = :u"), {"u": created}
            )
            s.execute(
                text(
                    "UPDATE job SET state = 'failed', error = CAST(:e AS jsonb) "
                    "WHERE resource_uuid = :u AND name = 'CreateVmInstance'"
                ),
                {
                    "u": created,
                    "e": '{"code": "SYS.CONNECTION_LOST", "details": {"leftToNextOwner": ["reserve"]}}',
                },
            )
            s.execute(text("UPDATE vm_instance SET state = 'Stopping' WHERE uuid = :u"), {"u": stopping})
            s.execute(text("UPDATE vm_instance SET state = 'Starting' WHERE uuid = :u"), {"u": starting})

    host = zone.hosts[0]
    await client.call(
        f"{client.topology.namespace}.simulator",
        "simulator.set_vm_state",
        {"hostUuid": host, "vmUuid": starting, "state": "Absent", "report": False},
    )
    await asyncio.to_thread(strand)
    return {"created": created, "stopping": stopping, "starting": starting}


def _assert_settled(node: Any, simulator: Any, zone: Any, vms: dict[str, str]) -> None:
    states = dict(_sql(node, "SELECT uuid, state FROM vm_instance"))
    assert states == {vms["stopping"]: "Running", vms["starting"]: "Stopped"}
    sim = simulator.hosts[zone.hosts[0]]
    assert set(sim.vms) == {vms["stopping"]}
    ((used_cpu, volumes, ips),) = _sql(
        node,
        "SELECT (SELECT sum(total_cpu - available_cpu) FROM host), (SELECT count(*) FROM volume), "
        "(SELECT count(*) FROM used_ip)",
    )
    assert used_cpu == 1  # only the running VM holds CPU
    assert volumes == len(sim.volumes) == 2 and ips == 2
    assert _sql(node, "SELECT count(*) FROM job WHERE state IN ('pending', 'running')") == [(0,)]


async def test_operators_see_stuck_vms_and_settle_them(quiet_node, client, simulator, tmp_path):
    zone = await build_zone(client, tmp_path, hosts=1)
    vms = await _strand(quiet_node, simulator, zone, client)
    stuck = (await client.api("GetStuckResources"))["inventories"]
    assert {(s["uuid"], s["state"]) for s in stuck} == {
        (vms["created"], "Starting"),
        (vms["stopping"], "Stopping"),
        (vms["starting"], "Starting"),
    }
    created = next(s for s in stuck if s["uuid"] == vms["created"])
    assert created["resourceType"] == "VmInstance" and created["settleWith"] == "SettleVmInstance"
    assert created["lastJob"]["name"] == "CreateVmInstance" and created["lastJob"]["state"] == "failed"
    # every other operation refuses the stuck VM, as before; settling is what moves it
    with pytest.raises(RingstackError) as err:
        await client.api("StopVmInstance", {"uuid": vms["starting"]})
    assert err.value.code == "VM.INVALID_STATE"

    replies = {
        name: await client.api("SettleVmInstance", {"uuid": uuid}, timeout=60) for name, uuid in vms.items()
    }
    assert (replies["created"]["toState"], replies["created"]["action"]) == ("Deleted", "rolledBack")
    assert (replies["stopping"]["toState"], replies["stopping"]["action"]) == ("Running", "rolledBack")
    assert (replies["starting"]["toState"], replies["starting"]["action"]) == ("Stopped", "rolledBack")
    _assert_settled(quiet_node, simulator, zone, vms)
    assert (await client.api("GetStuckResources"))["inventories"] == []
    again = await client.api("SettleVmInstance", {"uuid": vms["stopping"]})
    assert again["action"] == "unchanged" and again["toState"] == "Running"
    # a settled VM works normally again
    assert (await client.api("StartVmInstance", {"uuid": vms["starting"]}))["inventory"]["state"] == "Running"


async def test_the_owner_settles_stuck_vms_by_itself(scanning_node, client, simulator, tmp_path):
    zone = await build_zone(client, tmp_path, hosts=1)
    vms = await _strand(scanning_node, simulator, zone, client)

    async def none_stuck() -> bool:
        left = await asyncio.to_thread(
            _sql, scanning_node, "SELECT count(*) FROM vm_instance WHERE state IN ('Starting', 'Stopping')"
        )
        jobs = await asyncio.to_thread(
            _sql, scanning_node, "SELECT count(*) FROM job WHERE state IN ('pending', 'running')"
        )
        return left == [(0,)] and jobs == [(0,)]

    await until(none_stuck, 30, "the owner to settle every stuck VM")
    _assert_settled(scanning_node, simulator, zone, vms)
    settles = _sql(scanning_node, "SELECT state FROM job WHERE name = 'SettleVmInstance'")
    assert sorted(s for (s,) in settles) == ["succeeded"] * 3
