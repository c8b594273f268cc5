"""cluster.yml over real SSH into namespace hosts, each with its own sshd and install prefix: a
database host and a broker host (the postgresql and rabbitmq roles run instances of their own
there) and three management nodes (no systemd in a namespace: ringstack-ctl's supervision) sharing
them (through relays on each host's link: the namespaces are joined to the root one only). Proven: the
cluster forms a ring; check mode changes nothing; a second run is changed=0; a reconfigure of one
node restarts that node only (process ids compared)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid as uuidlib
from pathlib import Path

import pytest

from mgmt.cli.supervise import read_state
from tests.support.procs import CTL, ROOT
from tests.system.kvmsupport import FakeKvmHost, TcpRelay

ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"
pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not ANSIBLE_PLAYBOOK.exists() or not shutil.which("sshd"),
    reason="needs root (namespaces), sshd and ansible-core",
)
RECAP = re.compile(r"^(\S+)\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)


def playbook(inventory: Path, work: Path, *extra: str) -> tuple[dict[str, int], str, float]:
    """Run cluster.yml; each host's changed count from the recap, the output, and the seconds."""
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(work / "ansible.cfg"),  # empty: no ansible.cfg of the cwd applies
        "ANSIBLE_HOST_KEY_CHECKING": "False",
        "ANSIBLE_SSH_ARGS": "-o ControlMaster=auto -o ControlPersist=60s -o UserKnownHostsFile=/dev/null",
        "ANSIBLE_SSH_CONTROL_PATH_DIR": str(work / "cp"),
        "ANSIBLE_PIPELINING": "True",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "ANSIBLE_LOCAL_TEMP": str(work / "tmp"),
        "ANSIBLE_FORKS": "5",
    }
    started = time.monotonic()
    done = subprocess.run(
        [str(ANSIBLE_PLAYBOOK), "-i", str(inventory), str(ROOT / "ansible" / "cluster.yml"), *extra],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    seconds = time.monotonic() - started
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-6000:]
    recap = {m.group(1): int(m.group(3)) for m in RECAP.finditer(done.stdout)}
    assert all(int(m.group(5)) == 0 and int(m.group(4)) == 0 for m in RECAP.finditer(done.stdout)), out
    return recap, out, seconds


def ctl(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CTL, *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def lab(tmp_path, namespace):
    hosts: list[FakeKvmHost] = []
    relays: list[TcpRelay] = []
    pg_root = Path(f"/tmp/rs-pg-{uuidlib.uuid4().hex[:8]}")  # reachable by the postgres user
    try:
        db = FakeKvmHost(tmp_path / "db")
        hosts.append(db)
        db.start_sshd()
        mq = FakeKvmHost(tmp_path / "mq")
        hosts.append(mq)
        mq.start_sshd()
        managers = []
        for i in range(3):
            host = FakeKvmHost(tmp_path / f"mn{i}")
            hosts.append(host)
            host.start_sshd()
            relays.append(TcpRelay((host.root_ip, 5433), (db.ip, 5432)))
            relays.append(TcpRelay((host.root_ip, 5673), (mq.ip, 5672)))
            managers.append(host)
        yield db, mq, managers, pg_root
    finally:
        for host in hosts[2:]:
            state = read_state(host.base / "prefix" / "run")
            if state is not None:
                ctl(["stop", "--run-dir", str(host.base / "prefix" / "run")], {})
        for relay in relays:
            relay.close()
        for host in hosts:
            host.close()
        if (pg_root / "data").exists():
            subprocess.run(
                [
                    "runuser",
                    "-u",
                    "postgres",
                    "--",
                    "/usr/lib/postgresql/15/bin/pg_ctl",
                    "stop",
                    "-m",
                    "immediate",
                    "-D",
                    str(pg_root / "data"),
                ],
                capture_output=True,
                check=False,
            )
        shutil.rmtree(pg_root, ignore_errors=True)


def inventory(
    path: Path,
    db: FakeKvmHost,
    mq: FakeKvmHost,
    managers: list[FakeKvmHost],
    pg_root: Path,
    namespace: str,
    extra: dict[str, dict[str, object]] | None = None,
) -> None:
    lines = [
        "[database]",
        f"db ansible_host={db.ip} ansible_ssh_private_key_file={db.base / 'ssh' / 'client_key'}",
        "",
        "[broker]",
        f"mq ansible_host={mq.ip} ansible_ssh_private_key_file={mq.base / 'ssh' / 'client_key'}",
        "",
        "[management]",
    ]
    for i, host in enumerate(managers):
        host_vars = {
            "ansible_host": host.ip,
            "ansible_ssh_private_key_file": str(host.base / "ssh" / "client_key"),
            "ringstack_root": str(host.base / "prefix"),
            "ringstack_broker_url": f"amqp://ringstack:s3cret@{host.root_ip}:5673/",
            "ringstack_database_url": f"postgresql+psycopg2://ringstack:s3cret@{host.root_ip}:5433/ringstack",
            "ringstack_settings": {
                "heartbeat_interval": 0.5,
                "lease_ttl": 1.5,
                **(extra or {}).get(f"mn{i}", {}),
            },
        }
        lines.append(
            f"mn{i} "
            + " ".join(f"{k}='{json.dumps(v) if isinstance(v, dict) else v}'" for k, v in host_vars.items())
        )
    lines += [
        "",
        "[all:vars]",
        "ansible_user=root",
        f"ansible_python_interpreter={sys.executable}",
        f"ringstack_python={sys.executable}",
        f"ringstack_pythonpath={ROOT}",
        f"ringstack_namespace={namespace}",
        f"postgresql_root={pg_root}",
        "postgresql_password=s3cret",
        f"rabbitmq_root={mq.base / 'rabbitmq'}",
        "rabbitmq_password=s3cret",
        "",
    ]
    path.write_text("\n".join(lines))


def test_cluster_playbook_installs_is_idempotent_and_reconfigures_one_node(lab, tmp_path, namespace):
    db, mq, managers, pg_root = lab
    inv = tmp_path / "inventory.ini"
    inventory(inv, db, mq, managers, pg_root, namespace)
    work = tmp_path / "ansible"
    (work / "cp").mkdir(parents=True)
    (work / "ansible.cfg").write_text("")

    # Check mode on fresh hosts: it reports what it would do and does none of it.
    fresh, out, _ = playbook(inv, work, "--check")
    assert all(fresh[f"mn{i}"] > 0 for i in range(3)), out
    assert not any((h.base / "prefix").exists() for h in managers) and not pg_root.exists()

    first, out, install_seconds = playbook(inv, work)
    assert first["db"] > 0 and first["mq"] > 0 and all(first[f"mn{i}"] > 0 for i in range(3)), out
    assert "database upgraded from revision None" in out or "changed: [mn0]" in out
    status_env = {
        "RINGSTACK_CONFIG": "/dev/null",
        "RINGSTACK_NAMESPACE": namespace,
        "RINGSTACK_BROKER_URL": f"amqp://ringstack:s3cret@{mq.ip}:5672/",
        "RINGSTACK_DATABASE_URL": f"postgresql+psycopg2://ringstack:s3cret@{db.ip}:5432/ringstack",
    }
    deadline = time.monotonic() + 60
    while True:  # the ring settles once every node has seen the others' heartbeats
        status = ctl(["status", "-f", "json"], status_env)
        doc = json.loads(status.stdout) if status.stdout.startswith("{") else {}
        if status.returncode == 0 and len([n for n in doc["nodes"] if n["state"] == "alive"]) == 3:
            break
        assert time.monotonic() < deadline, (status.stdout, status.stderr)
        time.sleep(0.5)
    assert doc["ownedPartitions"] == 256 and all(n["supervisor"] == "ringstack-ctl" for n in doc["nodes"])
    pids = {i: read_state(h.base / "prefix" / "run").nodePid for i, h in enumerate(managers)}  # type: ignore[union-attr]

    checked, out, _ = playbook(inv, work, "--check")
    assert set(checked.values()) == {0}, out
    second, out, second_seconds = playbook(inv, work)
    assert set(second.values()) == {0}, out
    assert {i: read_state(h.base / "prefix" / "run").nodePid for i, h in enumerate(managers)} == pids  # type: ignore[union-attr]

    # A reconfigure of mn1 only: it restarts (a new process), the others keep theirs.
    inventory(inv, db, mq, managers, pg_root, namespace, {"mn1": {"log_level": "DEBUG"}})
    third, out, _ = playbook(inv, work)
    assert third["mn1"] > 0 and third["mn0"] == third["mn2"] == third["db"] == third["mq"] == 0, (third, out)
    after = {i: read_state(h.base / "prefix" / "run").nodePid for i, h in enumerate(managers)}  # type: ignore[union-attr]
    assert after[0] == pids[0] and after[2] == pids[2] and after[1] != pids[1]
    assert 'log_level = "DEBUG"' in (managers[1].base / "prefix" / "etc" / "ringstack.toml").read_text()
    status = ctl(["status", "-f", "json"], status_env)
    assert status.returncode == 0, status.stdout
    print(f"cluster.yml: install {install_seconds:.1f} s, second run {second_seconds:.1f} s (changed=0)")
