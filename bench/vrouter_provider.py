"""The VirtualRouter provider on the management side: what a VR costs a VM create, and first
creates racing.

Method
------
A fresh database and broker namespace (``bench.nodes.environment``), one simulator process (an
appliance VM started on a simulated host boots a simulated VR agent), ``--nodes`` real node
processes. The zone is built as ``tests.support.zone.build_zone`` does, plus a public L3, a
management L3 and a default VR offering (``tests.support.zone.add_vr_offering``). Then, timing
each ``CreateVmInstance`` from publish to reply:

* ``plain``: ``--sequential`` creates one after another on an L3 with no network service;
* ``first``: the first create on an L3 taking DHCP, DNS, SNAT and PortForwarding from the
  VirtualRouter provider (it makes the L3's VR: appliance VM, connect, NICs, full sync);
* ``served``: ``--sequential`` more creates on that L3, one after another (the VR exists: one
  ``vrouter.dhcp.add``, ``vrouter.snat.set`` and ``vrouter.dns.set`` each);
* ``race``: ``--race`` concurrent first creates on another such L3: the wall time, how many VRs
  it has (must be 1) and how many DHCP entries its VR holds (must be ``--race``).

Run: ``python -m bench.vrouter_provider [--nodes 3] [--json]``. Everything is removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.nodes import DEFAULT_BROKER_URL, Client, Nodes, converge, environment, progress
from schema.db.network import VIRTUAL_ROUTER_PROVIDER_UUID
from tests.support.simulator import SimulatorProcess
from tests.support.zone import add_vr_offering, build_zone, vm_request

SERVICES = ["DHCP", "DNS", "SNAT", "PortForwarding"]


def ms(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "n": len(ordered),
        "p50_ms": round(1000 * statistics.median(ordered), 1),
        "max_ms": round(1000 * ordered[-1], 1),
    }


async def vr_l3(client: Client, l2: str, name: str, cidr: str) -> str:
    l3 = (await client.api("CreateL3Network", {"l2NetworkUuid": l2, "name": name}))["inventory"]["uuid"]
    await client.api("AddIpRangeByNetworkCidr", {"l3NetworkUuid": l3, "name": name, "networkCidr": cidr})
    await client.api(
        "AttachNetworkServiceToL3Network",
        {"l3NetworkUuid": l3, "networkServices": {VIRTUAL_ROUTER_PROVIDER_UUID: SERVICES}},
    )
    return l3


async def timed(client: Client, body: dict[str, Any]) -> float:
    began = time.monotonic()
    await client.api("CreateVmInstance", body, timeout=180)
    return time.monotonic() - began


async def run(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {"nodes": args.nodes}
    with (
        environment("vrp", args.broker_url) as (scratch, broker),
        tempfile.TemporaryDirectory(prefix="bench-vrp-") as tmp,
    ):
        nodes = Nodes(scratch, broker)
        client = Client(broker, "vrp-client")
        simulator = SimulatorProcess(broker.url, broker.namespace)
        try:
            await asyncio.to_thread(simulator.wait_ready)
            started = nodes.start(args.nodes)
            await client.start()
            await client.login()
            await converge(client, scratch, {n.uuid for n in started})
            z = await build_zone(client, Path(tmp), hosts=2, host_cpu=256, host_memory=1024 << 30)
            await add_vr_offering(client, z)
            plain = [await timed(client, vm_request(z, f"plain{i}")) for i in range(args.sequential)]
            served_l3 = await vr_l3(client, z.l2, "served", "10.40.0.0/22")
            first = await timed(client, vm_request(z, "first", l3NetworkUuids=[served_l3]))
            served = [
                await timed(client, vm_request(z, f"served{i}", l3NetworkUuids=[served_l3]))
                for i in range(args.sequential)
            ]
            race_l3 = await vr_l3(client, z.l2, "race", "10.44.0.0/22")
            began = time.monotonic()
            await asyncio.gather(
                *(client.api("CreateVmInstance", vm_request(z, f"race{i}", l3NetworkUuids=[race_l3]), timeout=180)
                  for i in range(args.race))
            )  # fmt: skip
            race_s = time.monotonic() - began
            vrs = (await client.api("QueryVirtualRouterVm", {}))["inventories"]
            race_vrs = [v for v in vrs if v["guestL3NetworkUuid"] == race_l3]
            inventory = await client.bus.call(
                f"{broker.namespace}.simulator", "simulator.inventory", {}, timeout=30
            )
            entries = [inventory["vrouters"][v["uuid"]]["counts"]["dhcpEntries"] for v in race_vrs]
            result.update(
                plain=ms(plain),
                first=ms([first]),
                served=ms(served),
                race={
                    "creates": args.race,
                    "seconds": round(race_s, 2),
                    "vrs": len(race_vrs),
                    "dhcpEntries": entries,
                },
            )
            progress(json.dumps(result))
            return result
        finally:
            await client.close()
            nodes.close()
            simulator.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--sequential", type=int, default=10)
    parser.add_argument("--race", type=int, default=50)
    parser.add_argument("--broker-url", default=DEFAULT_BROKER_URL)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    print(json.dumps(result, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
