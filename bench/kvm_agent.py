"""KVM agent command overhead and VM start latency, through the broker.

Method
------
The agent runs as its own process (``python -m agents.kvm``, the daemon a host runs) against
libvirt's test driver (a private in-memory hypervisor: libvirt's own cost is near zero, so what is
measured is the agent and the bus). The client is an ``AsyncBus`` in this process calling through
``AgentClient``, one call in flight, every call timed:

* ``ping``: ``agent.ping`` round trips (validation, dispatch, reply through the replies exchange);
* ``start``: ``agent.vm.start`` of a fresh VM until the reply, which the agent sends once libvirt
  reports the domain running (define + create), followed by an untimed ``agent.vm.destroy``.

``--real`` adds the same start on a real libvirtd (``qemu:///system``, started if needed as in the
system tests) with the tiny TCG test guest, measured twice: until libvirt reports the domain running
(the reply), and until the guest prints that it has booted on its serial console.

``--migrate`` live-migrates the booted TCG test guest back and forth between two libvirtds on this
machine (``MigrationLab`` of the system tests: each "host" a network namespace with its own
libvirtd, the primary storage a directory both see), through the agents on the broker: the time of
``agent.vm.migrate`` until the reply, which the agent sends once libvirt has finished (memory copied,
the guest resumed at the destination, the source undefined), and the guest's downtime as the
destination's libvirt measured it (its completed job's ``downtime``).

Everything lives in a fresh namespace ``bench-<hex>``, deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as ``python bench/x.py``: make the repository importable, as -m does
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bus.aio import AsyncBus
from bus.topology import Topology
from mgmt.core.agents import AgentClient
from schema.agent import (
    BridgeReply,
    CreateVolumeCommand,
    DestroyVmCommand,
    EnsureBridgeCommand,
    MigrateVmCommand,
    PingCommand,
    PingReply,
    StartVmCommand,
    VmStateReply,
    VolumeReply,
)

ROOT = Path(__file__).resolve().parents[1]


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "n": len(ordered),
        "p50_ms": round(1000 * ordered[len(ordered) // 2], 3),
        "p99_ms": round(1000 * ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 3),
        "mean_ms": round(1000 * statistics.fmean(ordered), 3),
        "per_s": round(len(ordered) / sum(ordered), 1),
    }


def start_agent(workdir: Path, broker_url: str, namespace: str, host: str) -> subprocess.Popen[str]:
    node = workdir / "node.xml"
    from tests.system.kvmsupport import TEST_NODE_XML

    node.write_text(TEST_NODE_XML)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RINGSTACK_")}
    env.update(
        PYTHONPATH=str(ROOT),
        PYTHONUNBUFFERED="1",
        RINGSTACK_HOST_UUID=host,
        RINGSTACK_BROKER_URL=broker_url,
        RINGSTACK_NAMESPACE=namespace,
        RINGSTACK_LIBVIRT_URI=f"test://{node}",
        RINGSTACK_DOMAIN_TYPE="qemu",
        RINGSTACK_LOG_LEVEL="WARNING",
        RINGSTACK_KVM_AGENT_CONFIG="/dev/null",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "agents.kvm"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=sys.stderr,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:  # no sleeps: the agent says when it serves
        if " ready on " in line:
            return proc
    raise SystemExit(f"the agent exited with {proc.wait()} before it was ready")


def vm(**kw: Any) -> Any:
    from tests.system.kvmsupport import vm_spec

    return vm_spec(**kw)


async def measure_test_driver(agents: AgentClient, host: str, pings: int, starts: int) -> dict[str, Any]:
    for _ in range(50):  # warm-up
        await agents.call(PingCommand(host_uuid=host), PingReply)
    ping_times = []
    for _ in range(pings):
        t = time.perf_counter()
        await agents.call(PingCommand(host_uuid=host), PingReply)
        ping_times.append(time.perf_counter() - t)
    start_times = []
    for _ in range(starts):
        spec = vm()
        t = time.perf_counter()
        reply = await agents.call(StartVmCommand(host_uuid=host, vm=spec), VmStateReply)
        start_times.append(time.perf_counter() - t)
        assert reply.state == "Running"
        await agents.call(DestroyVmCommand(host_uuid=host, vm_uuid=spec.uuid), VmStateReply)
    return {"ping": summary(ping_times), "start_vm_test_driver": summary(start_times)}


async def measure_real(client: AsyncBus, broker_url: str, namespace: str, runs: int) -> dict[str, Any]:
    from agents.kvm.config import AgentConfig
    from tests.system.guest import build_guest, ensure_libvirtd
    from tests.system.kvmsupport import InProcessAgent, delete_agent_queues

    guest = await asyncio.to_thread(build_guest)
    daemon = await asyncio.to_thread(ensure_libvirtd)
    # /var/tmp with 0755: libvirt's qemu user must reach what it runs
    work = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="rs-bench-", dir="/var/tmp"))
    await asyncio.to_thread(work.chmod, 0o755)
    host = uuid.uuid4().hex
    config = AgentConfig(
        host_uuid=host,
        broker_url=broker_url,
        namespace=namespace,
        libvirt_uri="qemu:///system",
        domain_type="qemu",
        console_log_dir=str(work),
        netns=daemon.netns,
    )
    agent = await InProcessAgent.start(config, client)
    running, booted = [], []
    try:
        for _ in range(runs):
            spec = vm(
                root=str(guest.image),
                kernel=str(guest.kernel),
                initrd=str(guest.initrd),
                kernel_args=guest.kernel_args,
            )
            log = work / f"{spec.uuid}.log"
            t = time.perf_counter()
            await agent.client.call(StartVmCommand(host_uuid=host, vm=spec), VmStateReply)
            running.append(time.perf_counter() - t)
            while "RINGSTACK-GUEST-READY" not in (log.read_text(errors="replace") if log.exists() else ""):
                if time.perf_counter() - t > 300:
                    raise SystemExit("the guest did not boot within 300 s")
                await asyncio.sleep(0.05)
            booted.append(time.perf_counter() - t)
            await agent.client.call(DestroyVmCommand(host_uuid=host, vm_uuid=spec.uuid), VmStateReply)
    finally:
        await agent.close()
        await asyncio.to_thread(daemon.close)
        await asyncio.to_thread(shutil.rmtree, work, True)
        await asyncio.to_thread(delete_agent_queues, namespace, host)
    return {"start_vm_real_running": summary(running), "start_vm_real_booted": summary(booted)}


async def measure_migrate(client: AsyncBus, broker_url: str, namespace: str, runs: int) -> dict[str, Any]:
    import libvirt

    from agents.kvm.config import AgentConfig
    from tests.system.guest import build_guest
    from tests.system.kvmsupport import (
        GiB,
        InProcessAgent,
        MigrationLab,
        delete_agent_queues,
        l2,
        nic,
    )

    def make_lab() -> MigrationLab:
        base = Path(f"/var/tmp/rs-bench-mig-{uuid.uuid4().hex[:8]}")
        base.mkdir()
        base.chmod(0o755)  # libvirt's qemu user must reach the volumes
        return MigrationLab(base)

    guest = await asyncio.to_thread(build_guest)
    lab = await asyncio.to_thread(make_lab)
    base = lab.base
    shared = base / "ps"
    agents: list[InProcessAgent] = []
    uuids = [uuid.uuid4().hex for _ in lab.hosts]
    took, downtime = [], []
    try:
        for host, host_uuid in zip(lab.hosts, uuids, strict=True):
            host.add_uplink("rsup0")
            config = AgentConfig(
                host_uuid=host_uuid,
                broker_url=broker_url,
                namespace=namespace,
                libvirt_uri=host.uri,
                domain_type="qemu",
                console_log_dir=str(base / "console"),
                netns=host.ns.name,
                migration_shared_paths=[str(shared)],
            )
            agents.append(await InProcessAgent.start(config, client))
        root = await agents[0].client.call(
            CreateVolumeCommand(
                host_uuid=uuids[0],
                volume_uuid=uuid.uuid4().hex,
                primary_storage_uuid=uuid.uuid4().hex,
                primary_storage_url=str(shared),
                primary_storage_type="LocalStorage",
                size=GiB,
                image_uuid=uuid.uuid4().hex,
                image_url=f"file://{guest.image}",
            ),
            VolumeReply,
        )
        network = l2("rsbbench", physical="rsup0")
        for agent in agents:
            await agent.client.call(EnsureBridgeCommand(host_uuid=agent.host_uuid, l2=network), BridgeReply)
        spec = vm(
            root=root.install_path,
            nics=[nic(network=network)],
            kernel=str(guest.kernel),
            initrd=str(guest.initrd),
            kernel_args=guest.kernel_args,
        )
        log = base / "console" / f"{spec.uuid}.log"
        await agents[0].client.call(StartVmCommand(host_uuid=uuids[0], vm=spec), VmStateReply)
        t = time.perf_counter()
        while "RINGSTACK-GUEST-READY" not in (log.read_text(errors="replace") if log.exists() else ""):
            if time.perf_counter() - t > 300:
                raise SystemExit("the guest did not boot within 300 s")
            await asyncio.sleep(0.05)
        for i in range(runs):
            source, dest = agents[i % 2], lab.hosts[(i + 1) % 2]
            command = MigrateVmCommand(
                host_uuid=source.host_uuid,
                vm_uuid=spec.uuid,
                destination_host_uuid=uuids[(i + 1) % 2],
                destination_uri=dest.tcp_uri,
            )
            t = time.perf_counter()
            reply = await source.client.call(command, VmStateReply, timeout=300)
            took.append(time.perf_counter() - t)
            assert reply.state == "Running"

            def completed(uri: str = dest.uri) -> dict[str, Any]:
                conn = libvirt.open(uri)
                try:
                    stats: dict[str, Any] = conn.lookupByUUIDString(spec.uuid).jobStats(
                        libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED
                    )
                    return stats
                finally:
                    conn.close()

            stats = await asyncio.to_thread(completed)
            if libvirt.VIR_DOMAIN_JOB_DOWNTIME in stats:
                downtime.append(stats[libvirt.VIR_DOMAIN_JOB_DOWNTIME] / 1000)
        await agents[runs % 2].client.call(
            DestroyVmCommand(host_uuid=uuids[runs % 2], vm_uuid=spec.uuid), VmStateReply
        )
    finally:
        for agent in agents:
            await agent.close()
        await asyncio.to_thread(lab.close)
        await asyncio.to_thread(delete_agent_queues, namespace, *uuids)
    results = {"migrate_live_tcg_128mib": summary(took)}
    if downtime:
        results["migrate_downtime"] = summary(downtime)
    return results


async def run(args: argparse.Namespace) -> dict[str, Any]:
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    host = uuid.uuid4().hex
    client = AsyncBus(
        args.broker_url, Topology(namespace), process_name="bench-kvm-agent", default_timeout=60
    )
    await client.start()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        proc = await asyncio.to_thread(start_agent, Path(tmp), args.broker_url, namespace, host)
        try:
            results.update(await measure_test_driver(AgentClient(client), host, args.pings, args.starts))
        finally:
            proc.terminate()
            await asyncio.to_thread(proc.wait, 30)
    if args.real:
        results.update(await measure_real(client, args.broker_url, namespace, args.real_runs))
    if args.migrate:
        results.update(await measure_migrate(client, args.broker_url, namespace, args.migrate_runs))
    await client.close()
    from tests.support import infra
    from tests.system.kvmsupport import delete_agent_queues

    delete_agent_queues(namespace, host)
    infra.delete_topology(namespace)
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.kvm_agent", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--broker-url", default=os.environ.get("RINGSTACK_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/")
    )
    parser.add_argument("--pings", type=int, default=2000)
    parser.add_argument("--starts", type=int, default=200)
    parser.add_argument(
        "--real", action="store_true", help="also start the TCG test guest on a real libvirtd"
    )
    parser.add_argument("--real-runs", type=int, default=5)
    parser.add_argument(
        "--migrate",
        action="store_true",
        help="also live-migrate the TCG test guest between two libvirtds on this machine",
    )
    parser.add_argument("--migrate-runs", type=int, default=6)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = asyncio.run(run(args))
    machine = {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}
    if args.json:
        print(json.dumps({"machine": machine, "config": vars(args), "results": results}))
        return 0
    print(f"{'measure':28} {'n':>6} {'p50 ms':>9} {'p99 ms':>9} {'mean ms':>9} {'per s':>8}")
    for name, r in results.items():
        print(f"{name:28} {r['n']:>6} {r['p50_ms']:>9} {r['p99_ms']:>9} {r['mean_ms']:>9} {r['per_s']:>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
