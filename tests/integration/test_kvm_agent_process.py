"""``ringstack-kvm-agent`` as the daemon it is on a host: a config file, a pid file, the broker,
SIGTERM for a clean exit, and refusals that say why."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import uuid as uuidlib
from pathlib import Path

import pytest

from mgmt.core.agents import AgentClient
from schema.agent import PingCommand, PingReply, StartVmCommand, VmStateReply, VmSyncCommand, VmSyncReply
from tests.support.procs import ROOT
from tests.system.kvmsupport import delete_agent_queues, libvirt_test_uri, vm_spec


class AgentProcess:
    def __init__(self, config: Path, pid_file: Path) -> None:
        self.lines: list[str] = []
        self.ready = threading.Event()
        env = {k: v for k, v in os.environ.items() if not k.startswith("RINGSTACK_")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agents.kvm", "--config", str(config), "--pid-file", str(pid_file)],
            cwd=ROOT,
            env={**env, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if " ready on " in line:
                self.ready.set()
        self.ready.set()

    def wait_ready(self, timeout: float = 30) -> None:
        if not self.ready.wait(timeout) or self.proc.poll() is not None:
            raise AssertionError("the agent did not start:\n" + "\n".join(self.lines[-30:]))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def write_config(path: Path, **values: str) -> Path:
    path.write_text("".join(f'{key} = "{value}"\n' for key, value in values.items()))
    return path


@pytest.fixture
def settings(tmp_path, broker_url, namespace):
    host = uuidlib.uuid4().hex
    yield {
        "host_uuid": host,
        "broker_url": broker_url,
        "namespace": namespace,
        "libvirt_uri": libvirt_test_uri(tmp_path),
        "domain_type": "qemu",
    }
    delete_agent_queues(namespace, host)


async def test_the_daemon_serves_until_sigterm_and_owns_its_pid_file(tmp_path, settings, client):
    config = write_config(tmp_path / "kvm-agent.toml", **settings)
    pid_file = tmp_path / "run" / "agent.pid"
    agent = AgentProcess(config, pid_file)
    try:
        await asyncio.to_thread(agent.wait_ready)
        assert int(pid_file.read_text()) == agent.proc.pid
        host = settings["host_uuid"]
        agents = AgentClient(client, default_timeout=20)
        assert (await agents.call(PingCommand(host_uuid=host), PingReply)).host_uuid == host
        spec = vm_spec()
        assert (await agents.call(StartVmCommand(host_uuid=host, vm=spec), VmStateReply)).state == "Running"
        assert [v.uuid for v in (await agents.call(VmSyncCommand(host_uuid=host), VmSyncReply)).vms] == [
            spec.uuid
        ]

        second = AgentProcess(config, pid_file)  # the same host twice: refused, the first untouched
        assert await asyncio.to_thread(second.proc.wait, 30) == 1
        assert any("already running" in line for line in second.lines)
        assert int(pid_file.read_text()) == agent.proc.pid

        agent.proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(agent.proc.wait, 30) == 0
        assert not pid_file.exists()
    finally:
        agent.close()


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"domain_type": "xen"}, "domain_type"),
        ({"host_uuid": "not-a-uuid"}, "host_uuid"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_a_bad_config_stops_the_daemon_with_a_message_naming_the_key(tmp_path, settings, change, expected):
    config = write_config(tmp_path / "kvm-agent.toml", **{**settings, **change})
    agent = AgentProcess(config, tmp_path / "agent.pid")
    try:
        assert agent.proc.wait(30) == 2
        agent.ready.wait(5)
        assert any(expected in line and "invalid KVM agent configuration" in line for line in agent.lines)
        assert "Traceback" not in "\n".join(agent.lines)
    finally:
        agent.close()


def test_an_unreachable_libvirt_stops_the_daemon_with_a_message(tmp_path, settings):
    config = write_config(
        tmp_path / "kvm-agent.toml", **{**settings, "libvirt_uri": "test:///nonexistent/node.xml"}
    )
    agent = AgentProcess(config, tmp_path / "agent.pid")
    try:
        assert agent.proc.wait(30) == 1
        agent.ready.wait(5)
        assert any("cannot start" in line and "libvirt" in line for line in agent.lines)
        assert not (tmp_path / "agent.pid").exists()
    finally:
        agent.close()
