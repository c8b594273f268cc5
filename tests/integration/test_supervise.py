"""ringstack-ctl's own supervision (no systemd) with real node processes: a crashed node is started
again with back-off; `restart` (over the bus, and of this machine's node) drains, hands over and
starts a new incarnation while calls go on; `stop` ends node and supervisor; `start --daemon`
returns once the node is ready and is idempotent; an unsupervised node refuses `restart`."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from pathlib import Path

import orjson
import pytest

from mgmt.cli.supervise import EXIT_STOPPED, pid_alive, read_state
from tests.integration.test_ops import ctl, env, node_uuid  # noqa: F401  (env is a fixture)
from tests.support.procs import CTL, ROOT, NodeProcess


def wait_state(run_dir: Path, check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = read_state(run_dir)
        if state is not None and check(state):
            return state
        time.sleep(0.05)  # another process writes the state file
    raise AssertionError(f"timed out waiting for {what}: {read_state(run_dir)}")


@pytest.fixture
def supervised(env, tmp_path):  # noqa: F811
    run_dir = tmp_path / "run"
    log = open(tmp_path / "supervisor.out", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [*CTL, "start", "--supervise", "--run-dir", str(run_dir)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield proc, run_dir, tmp_path / "supervisor.out"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        state = read_state(run_dir)
        if state is not None and state.nodePid:
            os.kill(state.nodePid, signal.SIGKILL)
        log.close()


async def test_crash_restart_and_stop_under_supervision(supervised, env, client):  # noqa: F811
    proc, run_dir, out = supervised
    first = await asyncio.to_thread(wait_state, run_dir, lambda s: s.state == "ready", 60, "the first node")
    assert first.supervisorPid == proc.pid and first.nodeUuid

    # A crash (SIGKILL): started again after 1 s, then 2 s for a second crash in a row.
    os.kill(first.nodePid, signal.SIGKILL)  # type: ignore[arg-type]
    second = await asyncio.to_thread(
        wait_state, run_dir, lambda s: s.state == "ready" and s.nodePid != first.nodePid, 60, "a restart"
    )
    assert second.nodeUuid != first.nodeUuid and second.restarts == 1
    assert second.history[-1] == {"pid": first.nodePid, "exit": -signal.SIGKILL}
    os.kill(second.nodePid, signal.SIGKILL)  # type: ignore[arg-type]
    third = await asyncio.to_thread(
        wait_state, run_dir, lambda s: s.state == "ready" and s.nodePid != second.nodePid, 60, "a restart"
    )
    text = out.read_text()
    assert (
        "crashed (-9); starting it again in 1 s" in text and "crashed (-9); starting it again in 2 s" in text
    )

    # restart over the bus, with another node taking the API calls that go on meanwhile
    other = NodeProcess(env, "other").wait_ready(60)
    try:
        zone = (await client.api("CreateZone", {"name": "z"}))["inventory"]["uuid"]
        answered, failures = 0, []
        stop_load = asyncio.Event()

        async def load():
            nonlocal answered
            while not stop_load.is_set():
                try:
                    await client.api("UpdateZone", {"uuid": zone, "description": str(answered)}, timeout=30)
                    answered += 1
                except Exception as exc:  # counted, the assertion below shows them
                    failures.append(exc)
                await asyncio.sleep(0.1)

        loader = asyncio.create_task(load())
        started = time.monotonic()
        done = await asyncio.to_thread(ctl, ["restart", third.nodeUuid[:10], "--timeout", "90"], env)  # type: ignore[index]
        restart_seconds = time.monotonic() - started
        assert done.returncode == 0, (done.stdout, done.stderr, out.read_text()[-3000:])
        fourth = read_state(run_dir)
        assert fourth is not None and fourth.state == "ready" and fourth.nodeUuid != third.nodeUuid
        assert fourth.history[-1]["exit"] == 75 and fourth.restarts == 3
        status = orjson.loads((await asyncio.to_thread(ctl, ["status", "-f", "json"], env)).stdout)
        assert status["healthy"], status["problems"]
        by_uuid = {n["uuid"]: n for n in status["nodes"] if n["state"] == "alive"}
        assert by_uuid[fourth.nodeUuid]["supervisor"] == "ringstack-ctl"  # type: ignore[index]
        assert by_uuid[node_uuid(other)]["supervisor"] is None

        # this machine's node (SIGHUP to its supervisor)
        local = await asyncio.to_thread(ctl, ["restart", "--run-dir", str(run_dir)], env)
        assert local.returncode == 0, (local.stdout, local.stderr)
        fifth = read_state(run_dir)
        assert fifth is not None and fifth.nodeUuid != fourth.nodeUuid and fifth.restarts == 4
        stop_load.set()
        await loader
        assert not failures, failures[:3]
        assert answered > 10

        # an unsupervised node: nothing would start it again
        refused = await asyncio.to_thread(ctl, ["restart", node_uuid(other)], env)
        assert refused.returncode == 1 and "unsupervised" in refused.stderr, refused.stderr
        assert other.proc.poll() is None
    finally:
        other.close()

    stopped = await asyncio.to_thread(ctl, ["stop", "--run-dir", str(run_dir)], env)
    assert stopped.returncode == 0, stopped.stderr
    assert proc.wait(10) == EXIT_STOPPED
    assert read_state(run_dir) is None and not (run_dir / "supervisor.pid").exists()
    print(
        f"restart: one supervised node restarted under load in {restart_seconds:.1f} s, {answered} calls, 0 lost"
    )


def test_daemon_start_is_idempotent_and_stops(env, tmp_path):  # noqa: F811
    run_dir = tmp_path / "run"
    log_file = tmp_path / "node.log"
    env = {**env, "RINGSTACK_LOG_FILE": str(log_file)}
    started = time.monotonic()
    first = ctl(["start", "--daemon", "--run-dir", str(run_dir), "--wait", "90"], env)
    start_seconds = time.monotonic() - started
    assert first.returncode == 0 and " ready (supervisor " in first.stdout, (first.stdout, first.stderr)
    state = read_state(run_dir)
    assert state is not None and state.state == "ready"
    try:
        again = ctl(["start", "--daemon", "--run-dir", str(run_dir)], env)
        assert again.returncode == 0 and again.stdout.startswith("already running"), again.stdout
        assert read_state(run_dir).supervisorPid == state.supervisorPid  # type: ignore[union-attr]
        assert f"node {state.nodeUuid} ready" in (run_dir / "supervisor.log").read_text()
        # A supervisor killed outright: its node does not run on unseen, it drains and exits.
        os.kill(state.supervisorPid, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while pid_alive(state.nodePid):  # type: ignore[arg-type]
            assert time.monotonic() < deadline, "the node outlived its supervisor"
            time.sleep(0.1)
        assert f"node {state.nodeUuid}: stop requested; draining" in log_file.read_text()
    finally:
        stopped = ctl(["stop", "--run-dir", str(run_dir)], env)
    assert stopped.returncode == 0 and stopped.stdout.startswith("not running"), stopped.stderr
    assert read_state(run_dir) is None
    print(f"start --daemon: node ready in {start_seconds:.1f} s")
