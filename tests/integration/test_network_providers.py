"""The network service provider seam (mgmt/services/network/providers.py): a provider's strategy is
called at VM instantiation for exactly the NICs whose L3 takes services from its type, with those
services, and a failing provider rolls the VM create back (its revoke runs)."""

from __future__ import annotations

import pytest

from bus.errors import RingstackError
from mgmt.services.network.providers import NicServices, ProviderExtension
from mgmt.services.vm.create import VmInstantiateExtension
from mgmt.services.vm.plan import CreatePlan
from schema.db.network import FLAT_PROVIDER_UUID, VIRTUAL_ROUTER_PROVIDER_UUID
from tests.support.zone import add_vr_offering, build_zone, vm_request


class RecordingProvider(ProviderExtension):
    """A provider plugin that records what the seam hands it (and fails when asked to)."""

    provider_type = "VirtualRouter"

    def __init__(self, db, fail: bool = False) -> None:  # type: ignore[no-untyped-def]
        super().__init__(db)
        self.fail = fail
        self.applied: list[tuple[str, list[tuple[str, frozenset[str]]]]] = []
        self.revoked: list[str] = []

    async def apply(self, plan: CreatePlan, nics: list[NicServices]) -> None:
        self.applied.append((plan.vm_uuid, [(n.nic.l3_uuid, n.services) for n in nics]))
        if self.fail:
            raise RingstackError("VROUTER.TEST_FAILURE", "the provider refused")

    async def revoke(self, plan: CreatePlan, nics: list[NicServices]) -> None:
        self.revoked.append(plan.vm_uuid)


@pytest.fixture
async def zone(node, client, simulator, tmp_path):
    z = await build_zone(client, tmp_path, hosts=1)
    await add_vr_offering(client, z)  # the real VirtualRouter provider serves the L3 too
    other = (await client.api("CreateL3Network", {"l2NetworkUuid": z.l2, "name": "flat"}))["inventory"][
        "uuid"
    ]
    await client.api(
        "AddIpRangeByNetworkCidr", {"l3NetworkUuid": other, "name": "r", "networkCidr": "10.30.0.0/24"}
    )
    await client.api(
        "AttachNetworkServiceToL3Network",
        {"l3NetworkUuid": z.l3, "networkServices": {VIRTUAL_ROUTER_PROVIDER_UUID: ["DHCP", "SNAT", "DNS"]}},
    )
    await client.api(
        "AttachNetworkServiceToL3Network",
        {"l3NetworkUuid": other, "networkServices": {FLAT_PROVIDER_UUID: ["DHCP"]}},
    )
    z.extra["flat"] = other
    return z


async def test_a_provider_sees_only_the_nics_whose_l3_uses_it(node, client, zone):
    provider = RecordingProvider(node.db)
    node.extensions.register(VmInstantiateExtension, provider)
    vm = (
        await client.api("CreateVmInstance", vm_request(zone, l3NetworkUuids=[zone.l3, zone.extra["flat"]]))
    )["inventory"]
    assert vm["state"] == "Running"
    assert provider.applied == [(vm["uuid"], [(zone.l3, frozenset({"DHCP", "SNAT", "DNS"}))])]
    # A VM only on the Flat L3 never reaches the VirtualRouter provider.
    await client.api("CreateVmInstance", vm_request(zone, "flat-only", l3NetworkUuids=[zone.extra["flat"]]))
    assert len(provider.applied) == 1 and provider.revoked == []


async def test_a_failing_provider_rolls_the_create_back(node, client, zone):
    provider = RecordingProvider(node.db, fail=True)
    node.extensions.register(VmInstantiateExtension, provider)
    with pytest.raises(RingstackError) as err:
        await client.api("CreateVmInstance", vm_request(zone, "doomed"))
    assert err.value.code == "VROUTER.TEST_FAILURE" or "VROUTER.TEST_FAILURE" in str(err.value)
    assert len(provider.applied) == 1 and provider.revoked == [provider.applied[0][0]]
    vms = (
        await client.api("QueryVmInstance", {"conditions": [{"name": "name", "op": "=", "value": "doomed"}]})
    )["inventories"]
    assert all(v["state"] != "Running" for v in vms)
