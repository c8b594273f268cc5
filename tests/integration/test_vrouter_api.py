"""Virtual-router offerings and VIPs through the public API, on the real broker and database."""

from __future__ import annotations

import pytest

from bus.errors import RingstackError
from mgmt.core import migrate
from tests.support import infra
from tests.support.zone import build_zone


@pytest.fixture
async def zone(node, client, simulator, tmp_path):
    z = await build_zone(client, tmp_path, hosts=1)
    api = client.api
    public = (await api("CreateL3Network", {"l2NetworkUuid": z.l2, "name": "public", "category": "Public"}))[
        "inventory"
    ]
    await api(
        "AddIpRangeByNetworkCidr",
        {"l3NetworkUuid": public["uuid"], "name": "pub", "networkCidr": "203.0.113.0/28"},
    )
    mgmt = (await api("CreateL3Network", {"l2NetworkUuid": z.l2, "name": "mgmt", "category": "Private"}))[
        "inventory"
    ]
    z.extra.update(public=public["uuid"], mgmt=mgmt["uuid"])
    return z


async def test_offerings_are_checked_and_one_default_per_zone(zone, client):
    api = client.api
    base = {
        "zoneUuid": zone.zone,
        "imageUuid": zone.image,
        "managementNetworkUuid": zone.extra["mgmt"],
        "publicNetworkUuid": zone.extra["public"],
        "cpuNum": 1,
        "memorySize": 256 << 20,
    }
    first = (await api("CreateVirtualRouterOffering", {**base, "name": "vr-1", "isDefault": True}))[
        "inventory"
    ]
    second = (await api("CreateVirtualRouterOffering", {**base, "name": "vr-2", "isDefault": True}))[
        "inventory"
    ]
    found = (await api("QueryVirtualRouterOffering", {}))["inventories"]
    assert {o["uuid"]: o["isDefault"] for o in found} == {first["uuid"]: False, second["uuid"]: True}
    with pytest.raises(RingstackError) as err:  # a private network cannot be the public side
        await api(
            "CreateVirtualRouterOffering", {**base, "name": "bad", "publicNetworkUuid": zone.extra["mgmt"]}
        )
    assert err.value.code == "VROUTER.NOT_PUBLIC_NETWORK"
    with pytest.raises(RingstackError) as err:
        await api("CreateVirtualRouterOffering", {**base, "name": "bad", "cpuNum": 0})
    assert err.value.code == "SYS.INVALID_ARGUMENT"
    # The offering refers to the public L3: deleting that L3 is refused until Enforcing.
    with pytest.raises(RingstackError) as err:
        await api("DeleteL3Network", {"uuid": zone.extra["public"]})
    assert err.value.code == "SYS.RESOURCE_IN_USE"
    await api("DeleteVirtualRouterOffering", {"uuid": first["uuid"]})
    await api("DeleteVirtualRouterOffering", {"uuid": first["uuid"]})  # again: still fine
    assert [o["uuid"] for o in (await api("QueryVirtualRouterOffering", {}))["inventories"]] == [
        second["uuid"]
    ]
    # Normal accounts do not manage offerings.
    tenant = await client.new_account("vr-tenant")
    with pytest.raises(RingstackError) as err:
        await tenant.api("QueryVirtualRouterOffering", {})
    assert err.value.code == "SYS.PERMISSION_DENIED"


async def test_vips_come_from_the_public_ipam_for_tenants_within_quota(zone, client):
    api = client.api
    public = zone.extra["public"]
    vip = (await api("CreateVip", {"name": "v1", "l3NetworkUuid": public, "requiredIp": "203.0.113.5"}))[
        "inventory"
    ]
    assert (vip["ip"], vip["netmask"], vip.get("useFor")) == ("203.0.113.5", "255.255.255.240", None)
    with pytest.raises(RingstackError) as err:  # the address is taken now
        await api("CreateVip", {"name": "v2", "l3NetworkUuid": public, "requiredIp": "203.0.113.5"})
    assert err.value.code == "L3.IP_IN_USE"
    with pytest.raises(RingstackError) as err:
        await api("CreateVip", {"name": "v2", "l3NetworkUuid": zone.l3})
    assert err.value.code == "VROUTER.NOT_PUBLIC_NETWORK"
    # A tenant on the shared public network: its own VIPs, up to its quota, invisible to others.
    await api("ShareResource", {"resourceUuids": [public], "toPublic": True})
    tenant = await client.new_account("vip-tenant")
    other = await client.new_account("vip-other")
    await api("UpdateQuota", {"identityUuid": tenant.account_uuid, "name": "vip.num", "value": 2})
    mine = [
        (await tenant.api("CreateVip", {"name": f"t{i}", "l3NetworkUuid": public}))["inventory"]
        for i in range(2)
    ]
    with pytest.raises(RingstackError) as err:
        await tenant.api("CreateVip", {"name": "t3", "l3NetworkUuid": public})
    assert err.value.code == "IDENTITY.QUOTA_EXCEEDED"
    assert {v["uuid"] for v in (await tenant.api("QueryVip", {}))["inventories"]} == {v["uuid"] for v in mine}
    assert (await other.api("QueryVip", {}))["inventories"] == []
    # Another account's delete finds nothing to delete (as for a VIP already gone): the VIP stays.
    await other.api("DeleteVip", {"uuid": mine[0]["uuid"]})
    assert len((await tenant.api("QueryVip", {}))["inventories"]) == 2
    # Deleted: the address goes back to IPAM and can be asked for again.
    await tenant.api("DeleteVip", {"uuid": mine[0]["uuid"]})
    again = await tenant.api(
        "CreateVip", {"name": "t1", "l3NetworkUuid": public, "requiredIp": mine[0]["ip"]}
    )
    assert again["inventory"]["ip"] == mine[0]["ip"]


VROUTER_TABLES = {"virtual_router_offering", "vip"}


def test_the_vrouter_migration_matches_the_models_and_downgrades():
    from alembic import command

    name = infra.unique("rs_vrmig_")
    url = infra.create_database(name)
    try:
        migrate.upgrade(url, "0011")
        assert infra.schema_diffs(url, VROUTER_TABLES) == []
        command.downgrade(migrate.alembic_config(url), "0013")
        assert {
            d[1].name for d in infra.schema_diffs(url, VROUTER_TABLES) if d[0] == "add_table"
        } == VROUTER_TABLES
        migrate.upgrade(url, "0011")
        assert infra.schema_diffs(url, VROUTER_TABLES) == []
    finally:
        infra.drop_database(name)
