"""Flat-network EIPs on one namespace host: what the KVM agent's apply (``agents.kvm.flat_eip``)
costs for ``--eips`` EIPs.

Method: a fresh namespace host with a guest bridge and a public bridge (each with a veth as uplink);
the agent's own apply code builds ``--eips`` EIPs in one call (each a namespace, two veth pairs,
NAT rules, the ebtables chain), then the same state again (nothing changes), then one EIP added,
then all removed. Reported: seconds of each step and per EIP built; ``--json`` prints one object.
Runs as ``python -m bench.flat_eip`` from the repository root (root: namespaces). Everything it
made is removed at the end.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import uuid as uuidlib
from pathlib import Path

if __package__ in (None, ""):  # run as ``python bench/x.py``: make the repository importable, as -m does
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agents.kvm.flat_eip import FlatEip
from schema.agent import FlatEipSpec


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, text=True)


def spec(i: int) -> FlatEipSpec:
    return FlatEipSpec(
        eip_uuid=uuidlib.uuid4().hex,
        vip_ip=f"172.20.{i // 250}.{i % 250 + 2}",
        vip_netmask="255.255.0.0",
        vip_gateway="172.20.255.254",
        public_bridge="br_pub",
        guest_ip=f"10.70.{i // 250}.{i % 250 + 2}",
        guest_mac=f"fa:16:3e:00:{i // 256:02x}:{i % 256:02x}",
        guest_netmask="255.255.0.0",
        guest_gateway="10.70.255.254",
        guest_bridge="br_priv",
        guest_uplink="up_priv",
    )


def run(eips: int) -> dict[str, float | int]:
    host = f"rsbe{uuidlib.uuid4().hex[:8]}"
    sh("ip", "netns", "add", host)
    agent = FlatEip(tempfile.mkdtemp(prefix="rs-flat-eip-"), host)
    try:
        for bridge, uplink in (("br_pub", "up_pub"), ("br_priv", "up_priv")):
            sh("ip", "-n", host, "link", "add", bridge, "type", "bridge")
            sh("ip", "-n", host, "link", "add", uplink, "type", "veth", "peer", "name", f"{uplink}_p")
            sh("ip", "-n", host, "link", "set", uplink, "master", bridge)
            for dev in (bridge, uplink):
                sh("ip", "-n", host, "link", "set", dev, "up")
        specs = [spec(i) for i in range(eips)]
        out: dict[str, float | int] = {"eips": eips}
        for step, state in (
            ("build_s", specs),
            ("unchanged_s", specs),
            ("add_one_s", [*specs, spec(eips)]),
            ("remove_all_s", []),
        ):
            t0 = time.perf_counter()
            agent.apply(state)
            out[step] = round(time.perf_counter() - t0, 3)
        out["build_per_eip_s"] = round(float(out["build_s"]) / eips, 4)
        return out
    finally:
        agent.apply([])
        sh("ip", "netns", "del", host)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--eips", type=int, default=50)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = run(args.eips)
    print(json.dumps(result) if args.json else "\n".join(f"{k:>16}  {v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
