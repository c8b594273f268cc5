"""The management side of AddKVMHost / ReconnectHost: deploy the KVM agent over SSH and wait for it.

ZStack's connect chain, as a ``FlowChain`` (``mgmt.core.flow``) over the typed context
``HostDeploy``, one step per stage. Each failure is a ``RingstackError`` with code
``HOST.DEPLOY_FAILED`` and ``details = {"step": ..., "reason": ...}`` (plus the chain's
``failedStep`` and ``rolledBack``); the message names both:

1. ``ssh``: paramiko logs in (password or private key), checks the CPU architecture and that the
   host has Python 3.11+ for the agent's virtualenv. Changes nothing.
2. ``credentials``: the host's own broker user (``mgmt.core.brokeradmin``), least privilege, with
   a fresh password written into the agent's config.
3. ``bundle``: the agent install bundle of the code this node runs (``agents.kvm.bundle``), built
   once per code version and cached on disk; a process keeps using the bundle it first built
   (``agent_bundle``), so the hosts it deploys get the code it runs even while the tree changes.
   Changes nothing outside this node's cache.
4. ``playbook``: ``ansible/kvm-host.yml`` (data files when installed: ``mgmt.deploy``) over SSH: one SSH
   connection for the whole run (a master with its socket in the run's private directory, told
   to exit when the run ends, so none outlives it; each task would pay a new SSH handshake
   otherwise); a password goes through sshpass from a 0600 vars file, never argv.
5. ``connect``: ``agent.connect`` until the agent answers (its queue may not exist yet), and its
   facts come back.

Undo. A deployment is *fresh* when the host had no broker user before it (an added host, or one
whose earlier deployments were all undone): then everything it made is its own and a failure
removes it, in reverse: the agent it started on the host is stopped and its queue deleted
(``playbook``, also when the playbook itself fails half-way), then the broker user is deleted
(``credentials``, also when that step fails half-way). A deployment that is not fresh (a reconnect
of a host that was deployed before) undoes nothing: the user and the agent are the host's, an agent
may still run its VMs, and deleting the user would cut it off the broker (its old password cannot be
restored: the broker keeps only a hash; the next reconnect re-keys it). These undos act on the
broker and over SSH, not through an agent, so they are ``rollback``s: one that fails is reported in
the error (``rollbackFailures``) and logged; what it leaves belongs to a host that stays recorded
(Disconnected), and DeleteHost removes its broker user and queue.

The host service calls::

    result = await deploy_kvm_host(
        host_uuid, management_ip, port=ssh_port, username=username, password=password, ssh_key=ssh_key,
        bus=<the node's AsyncBus>, agent_broker_url="amqp://<broker address as the host sees it>:5672/",
        agent_settings={"domain_type": "kvm"},   # optional agent config keys (agents/kvm/config.py)
    )
    result.facts            # ConnectReply: host facts (CPUs, memory, versions) and the VMs it runs
    result.playbook_changed # False when nothing had to change on the host (a reconnect of a healthy host)

Blocking work (paramiko, rabbitmqctl, pip, ansible-playbook) runs in threads; the coroutine never
blocks the node's loop.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import paramiko

from agents.kvm.bundle import Bundle, build_bundle
from bus.aio import AsyncBus
from bus.errors import RingstackError, Sys
from mgmt.core.agents import AgentClient
from mgmt.core.brokeradmin import AgentCredentials, BrokerAdmin, agent_username, vhost_of
from mgmt.core.flow import Flow, FlowChain
from mgmt.deploy import KVM_HOST_PLAYBOOK
from schema.agent import ConnectCommand, ConnectReply

DEPLOY_FAILED = "HOST.DEPLOY_FAILED"
PLAYBOOK = KVM_HOST_PLAYBOOK
DEFAULT_CACHE_DIR = Path("/var/lib/ringstack/agent-bundles")  # the node's agent_bundle_dir
SUPPORTED_ARCHES = ("x86_64",)

log = logging.getLogger(__name__)


def failure(step: str, reason: str, **details: Any) -> RingstackError:
    return RingstackError(
        DEPLOY_FAILED,
        f"deploying the KVM agent failed at step {step}: {reason}",
        details={"step": step, "reason": reason, **details},
    )


@dataclass(frozen=True)
class SshTarget:
    host: str
    port: int = 22
    username: str = "root"
    password: str | None = None
    ssh_key: str | None = None  # a private key in OpenSSH/PEM text
    timeout: float = 10.0


@dataclass
class DeployResult:
    facts: ConnectReply
    broker_user: str
    build_id: str
    playbook_changed: bool
    seconds: dict[str, float] = field(default_factory=dict)


# ---------------------------------------------------------------------- step 1: ssh


def _load_key(text: str) -> paramiko.PKey:
    for kind in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            return kind.from_private_key(io.StringIO(text))
        except (paramiko.SSHException, ValueError):
            continue
    raise failure("ssh", "the SSH key is not a readable unencrypted private key (ed25519, ecdsa or rsa)")


def _ssh(target: SshTarget, command: str, step: str) -> tuple[int, str, str]:
    """Log in and run ``command``: (exit status, stdout, stderr). Blocking; failures name ``step``."""
    client = paramiko.SSHClient()
    # Like ZStack, the operator vouches for the address; the host key is not pinned.
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    where = f"{target.username}@{target.host}:{target.port}"
    try:
        client.connect(
            target.host,
            port=target.port,
            username=target.username,
            password=target.password,
            pkey=_load_key(target.ssh_key) if target.ssh_key else None,
            timeout=target.timeout,
            banner_timeout=target.timeout,
            auth_timeout=target.timeout,
            allow_agent=False,
            look_for_keys=False,
        )
        _in, out, err = client.exec_command(command, timeout=target.timeout)
        stdout = out.read().decode(errors="replace")
        stderr = err.read().decode(errors="replace")
        return out.channel.recv_exit_status(), stdout, stderr
    except paramiko.AuthenticationException:
        raise failure(step, f"authentication failed for {where}") from None
    except (paramiko.SSHException, OSError, EOFError) as exc:
        raise failure(step, f"cannot reach {where}: {exc or type(exc).__name__}") from None
    finally:
        client.close()


def check_ssh(target: SshTarget) -> dict[str, str]:
    """Log in and check the host can run the agent; blocking."""
    where = f"{target.username}@{target.host}:{target.port}"
    status, out, err = _ssh(
        target, "uname -m; python3 -c 'import sys; print(\"%d.%d\" % sys.version_info[:2])'", "ssh"
    )
    lines = out.split()
    if status != 0 or len(lines) < 2:
        raise failure("ssh", f"{where} has no python3 ({err.strip()})")
    arch, python = lines[0], lines[1]
    if arch not in SUPPORTED_ARCHES:
        raise failure("ssh", f"{where} is {arch}; the agent supports {', '.join(SUPPORTED_ARCHES)}")
    if tuple(int(p) for p in python.split(".")) < (3, 11):
        raise failure("ssh", f"{where} has Python {python}; the agent needs 3.11 or newer")
    return {"arch": arch, "python": python}


# ---------------------------------------------------------------------- step 3: bundle

_bundles: dict[tuple[Path, Path | None], Bundle] = {}
_bundles_lock = threading.Lock()


def agent_bundle(cache_dir: Path, wheel: Path | None = None) -> Bundle:
    """The bundle of the code this process runs: built (or found in ``cache_dir``) at its first
    deployment, then the same one every time, so a reconnect does not reinstall a host because a
    file of the source tree changed under a running node. Blocking; one build at a time."""
    key = (cache_dir, wheel)
    with _bundles_lock:
        bundle = _bundles.get(key)
        if bundle is None or not bundle.path.exists():
            bundle = _bundles[key] = build_bundle(cache_dir, wheel=wheel)
        return bundle


# ---------------------------------------------------------------------- step 4: playbook


def _failed_task(output: str) -> str:
    """The failing task and Ansible's first message about it, from the default callback's output
    (``fatal: [h]: FAILED! => {...}``, or ``failed: [h] (item=...) => {...}`` in a loop)."""
    task, reason, failed_task = "", "", ""
    for line in output.splitlines():
        header = re.match(r"^TASK \[(.*)\]", line)
        if header:
            task = header.group(1)
            continue
        found = re.match(
            r"^(?:fatal|failed): \[[^\]]*\](?: \(item=.*?\))?(?::\s*(?:FAILED|UNREACHABLE)!)?\s*=>\s*(\{.*\})\s*$",
            line,
        )
        if not found or failed_task == task:
            continue  # the first message of a failing task says the most
        failed_task = task
        try:
            data = json.loads(found.group(1))
        except ValueError:
            reason = found.group(1)[:500]
            continue
        parts = [str(data.get("msg", "")).strip(), str(data.get("stderr", "")).strip()]
        reason = "; ".join(p for p in parts if p)[:1500] or "failed"
    return f"task '{failed_task}' failed: {reason}" if reason else ""


def run_playbook(
    target: SshTarget, variables: Mapping[str, Any], *, timeout: float = 900, playbook: Path = PLAYBOOK
) -> bool:
    """Run the host playbook; True when it changed something. Blocking."""
    if (
        shutil.which("ansible-playbook") is None
        and not (Path(sys.executable).parent / "ansible-playbook").exists()
    ):
        raise failure(
            "playbook", "ansible-playbook is not installed on the management node (pip ringstack[deploy])"
        )
    if target.password is not None and shutil.which("sshpass") is None:
        raise failure(
            "playbook", "password SSH needs sshpass on the management node (apt-get install sshpass)"
        )
    executable = shutil.which("ansible-playbook") or str(Path(sys.executable).parent / "ansible-playbook")
    with tempfile.TemporaryDirectory(prefix="rs-ansible-") as tmp:
        work = Path(tmp)
        extra: dict[str, Any] = {
            **variables,
            "ansible_port": target.port,
            "ansible_user": target.username,
            "ansible_python_interpreter": variables.get("agent_python", "/usr/bin/python3"),
        }
        argv = [executable, "-i", f"{target.host},", str(playbook), "-e", f"@{work / 'vars.json'}"]
        if target.password is not None:
            extra["ansible_password"] = target.password
        if target.ssh_key is not None:
            key = work / "key"
            key.write_text(target.ssh_key if target.ssh_key.endswith("\n") else target.ssh_key + "\n")
            key.chmod(0o600)
            argv += ["--private-key", str(key)]
        (work / "ansible.cfg").write_text("[defaults]\n")
        masters = work / "cp"
        masters.mkdir(mode=0o700)
        vars_file = work / "vars.json"
        vars_file.touch(mode=0o600)
        vars_file.write_text(json.dumps(extra))
        env = {
            **os.environ,
            "ANSIBLE_CONFIG": str(work / "ansible.cfg"),  # empty: no ansible.cfg of the cwd applies
            "ANSIBLE_SSH_ARGS": "-o ControlMaster=auto -o ControlPersist=60s -o StrictHostKeyChecking=no"
            " -o UserKnownHostsFile=/dev/null",
            "ANSIBLE_SSH_CONTROL_PATH_DIR": str(masters),
            "ANSIBLE_HOST_KEY_CHECKING": "False",
            "ANSIBLE_RETRY_FILES_ENABLED": "False",
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_PIPELINING": "True",
            "ANSIBLE_LOCAL_TEMP": str(work / "local"),
            "ANSIBLE_TIMEOUT": str(int(target.timeout)),
            "ANSIBLE_STDOUT_CALLBACK": "default",
        }
        try:
            done = subprocess.run(
                argv,
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            raise failure("playbook", f"ansible-playbook did not finish within {timeout} s") from None
        finally:
            _stop_masters(masters)
    if done.returncode != 0:
        reason = _failed_task(done.stdout) or (done.stderr.strip() or done.stdout.strip())[-1500:]
        raise failure("playbook", reason, exitCode=done.returncode)
    recap = re.search(r"changed=(\d+)", done.stdout)
    return bool(recap and int(recap.group(1)) > 0)


def _stop_masters(directory: Path) -> None:
    """Tell the SSH masters of a playbook run to exit now, not when their persist time is up."""
    for socket in directory.iterdir():
        subprocess.run(
            ["ssh", "-o", f"ControlPath={socket}", "-O", "exit", "ringstack-host"],
            capture_output=True,
            timeout=10,
            check=False,
            stdin=subprocess.DEVNULL,
        )


# ---------------------------------------------------------------------- undo on the host and broker

# Where the role puts the agent unless the playbook variables say otherwise
# (ansible/roles/kvm_agent/defaults/main.yml).
DEFAULT_AGENT_ROOT = "/opt/ringstack/kvm-agent"
AGENT_UNIT = "ringstack-kvm-agent"


def stop_agent(target: SshTarget, playbook_vars: Mapping[str, Any]) -> None:
    """Stop the agent the playbook started (systemd unit or agentctl's pid file), as the playbook
    started it; nothing running is fine. Blocking."""
    root = str(playbook_vars.get("agent_root", DEFAULT_AGENT_ROOT))
    pid_file = str(playbook_vars.get("agent_pid_file", f"{root}/run/agent.pid"))
    q = shlex.quote
    command = (
        f"if [ -d /run/systemd/system ] && [ -e /etc/systemd/system/{AGENT_UNIT}.service ]; then"
        f" systemctl disable --now {AGENT_UNIT} || exit 1; fi;"
        f" if [ -x {q(root + '/agentctl')} ]; then {q(root + '/agentctl')} stop - - {q(pid_file)} - 30; fi"
    )
    status, out, err = _ssh(target, command, "playbook")
    if status != 0:
        raise failure("playbook", f"stopping the agent failed: {(err or out).strip()[:500]}")


async def delete_agent_queue(bus: AsyncBus, host_uuid: str) -> None:
    """Delete the agent's command queue, on a connection of its own (a failed operation closes its
    channel); a queue that does not exist is fine."""
    name = bus.topology.agent_queue(host_uuid).name
    connection = await aio_pika.connect(bus.url, client_properties={"connection_name": "agent-forget"})
    async with connection:
        channel = await connection.channel()
        await channel.queue_delete(name)


# ---------------------------------------------------------------------- the chain


@dataclass
class HostDeploy:
    """The typed context of one deployment: its inputs, then what each step found and made."""

    host_uuid: str
    target: SshTarget
    bus: AsyncBus
    agent_broker_url: str  # the broker as the host reaches it (its credentials are replaced)
    broker_admin: BrokerAdmin
    agent_settings: Mapping[str, Any] = field(default_factory=dict)
    playbook_vars: Mapping[str, Any] = field(default_factory=dict)
    bundle_cache_dir: Path = DEFAULT_CACHE_DIR
    agent_wheel: Path | None = None
    management_node_uuid: str | None = None
    playbook_timeout: float = 900.0
    connect_timeout: float = 60.0
    # found and made by the steps
    host_info: dict[str, str] = field(default_factory=dict)  # ssh: arch, python
    fresh: bool = False  # credentials: the host had no broker user; what this run makes is its own
    credentials: AgentCredentials | None = None
    bundle: Bundle | None = None
    playbook_changed: bool = False
    facts: ConnectReply | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def namespace(self) -> str:
        return self.bus.topology.namespace


def _stage(
    name: str, run: Callable[[HostDeploy], Awaitable[None]]
) -> Callable[[HostDeploy], Awaitable[None]]:
    """A step's work, timed, every failure a ``HOST.DEPLOY_FAILED`` that names the step."""

    async def staged(ctx: HostDeploy) -> None:
        started = time.monotonic()
        try:
            await run(ctx)
        except RingstackError as exc:
            if exc.code == DEPLOY_FAILED:
                raise
            raise failure(name, exc.message) from None
        except Exception as exc:
            log.exception("host %s: step %s failed unexpectedly", ctx.host_uuid, name)
            raise failure(name, f"{type(exc).__name__}: {exc}") from None
        ctx.seconds[name] = round(time.monotonic() - started, 3)

    return staged


async def _ssh_step(ctx: HostDeploy) -> None:
    ctx.host_info = await asyncio.to_thread(check_ssh, ctx.target)


async def _credentials(ctx: HostDeploy) -> None:
    admin = ctx.broker_admin
    users = await asyncio.to_thread(admin.users)
    ctx.fresh = agent_username(ctx.namespace, ctx.host_uuid) not in users
    ctx.credentials = await admin.ensure_agent_user_async(
        ctx.namespace, ctx.host_uuid, vhost_of(ctx.agent_broker_url)
    )


async def _remove_user(ctx: HostDeploy) -> None:
    if ctx.fresh:  # a host deployed before keeps its user (see the module)
        await ctx.broker_admin.delete_agent_user_async(ctx.namespace, ctx.host_uuid)


async def _bundle(ctx: HostDeploy) -> None:
    if ctx.bundle is None:
        ctx.bundle = await asyncio.to_thread(agent_bundle, ctx.bundle_cache_dir, ctx.agent_wheel)


async def _playbook(ctx: HostDeploy) -> None:
    assert ctx.credentials is not None and ctx.bundle is not None
    settings = {
        "host_uuid": ctx.host_uuid,
        "namespace": ctx.namespace,
        **{k: v for k, v in ctx.agent_settings.items() if v is not None},
        "broker_url": ctx.credentials.url(ctx.agent_broker_url),
    }
    variables = {
        **ctx.playbook_vars,
        "ringstack_bundle": str(ctx.bundle.path),
        "ringstack_build_id": ctx.bundle.build_id,
        "ringstack_wheel": ctx.bundle.wheel,
        "agent_settings": settings,
    }
    ctx.playbook_changed = await asyncio.to_thread(
        run_playbook, ctx.target, variables, timeout=ctx.playbook_timeout
    )


async def _remove_agent(ctx: HostDeploy) -> None:
    if ctx.fresh:  # a host deployed before keeps its agent: it may run VMs (see the module)
        await asyncio.to_thread(stop_agent, ctx.target, ctx.playbook_vars)
        await delete_agent_queue(ctx.bus, ctx.host_uuid)


async def _connect(ctx: HostDeploy) -> None:
    """Call agent.connect until the agent answers or ``connect_timeout`` passes."""
    client = AgentClient(ctx.bus)
    command = ConnectCommand(host_uuid=ctx.host_uuid, management_node_uuid=ctx.management_node_uuid)
    timeout = ctx.connect_timeout
    deadline = time.monotonic() + timeout
    last = "no answer"
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise failure("connect", f"the agent did not answer agent.connect within {timeout} s ({last})")
        try:
            ctx.facts = await client.call(command, ConnectReply, timeout=min(5.0, remaining))
            return
        except RingstackError as exc:
            # UNAVAILABLE: its queue does not exist yet; TIMEOUT: not consuming yet. Both pass.
            if exc.code not in (Sys.UNAVAILABLE, Sys.TIMEOUT, Sys.CONNECTION_LOST):
                raise failure(
                    "connect", f"the agent answered agent.connect with {exc.code}: {exc.message}"
                ) from None
            last = exc.message
        await asyncio.sleep(min(0.5, max(0.0, deadline - time.monotonic())))


# The steps in order. ``undo_failed``: a step that fails half-way may have made its user (one
# rabbitmqctl call of several) or started the agent (a later task failed), so its undo runs too.
STEPS: tuple[Flow[HostDeploy], ...] = (
    Flow("ssh", _stage("ssh", _ssh_step)),
    Flow("credentials", _stage("credentials", _credentials), rollback=_remove_user, undo_failed=True),
    Flow("bundle", _stage("bundle", _bundle)),
    Flow("playbook", _stage("playbook", _playbook), rollback=_remove_agent, undo_failed=True),
    Flow("connect", _stage("connect", _connect)),
)


async def deploy_kvm_host(
    host_uuid: str,
    ip: str,
    *,
    port: int = 22,
    username: str = "root",
    password: str | None = None,
    ssh_key: str | None = None,
    bus: AsyncBus,
    agent_broker_url: str,
    agent_settings: Mapping[str, Any] | None = None,
    playbook_vars: Mapping[str, Any] | None = None,
    broker_admin: BrokerAdmin | None = None,
    bundle_cache_dir: Path = DEFAULT_CACHE_DIR,
    agent_wheel: Path | None = None,
    bundle: Bundle | None = None,
    management_node_uuid: str | None = None,
    ssh_timeout: float = 10.0,
    playbook_timeout: float = 900.0,
    connect_timeout: float = 60.0,
) -> DeployResult:
    """Deploy (or re-deploy) the KVM agent on a host and return its facts; see the module doc.

    ``agent_broker_url``: the broker as the host reaches it (its credentials are replaced by the
    host's own). ``agent_settings``: extra agent config keys (``domain_type``, ``libvirt_uri``, ...).
    ``playbook_vars``: role variables (``agent_root``, ``agent_python``, ...). ``bundle``: one
    built beforehand (``agents.kvm.bundle.build_bundle``), else ``agent_bundle`` gives it.
    """
    if (password is None) == (ssh_key is None):
        raise RingstackError(Sys.INVALID_ARGUMENT, "give exactly one of password and ssh_key")
    ctx = HostDeploy(
        host_uuid,
        SshTarget(ip, port, username, password, ssh_key, ssh_timeout),
        bus,
        agent_broker_url,
        broker_admin or BrokerAdmin(),
        agent_settings=agent_settings or {},
        playbook_vars=playbook_vars or {},
        bundle_cache_dir=bundle_cache_dir,
        agent_wheel=agent_wheel,
        bundle=bundle,
        management_node_uuid=management_node_uuid,
        playbook_timeout=playbook_timeout,
        connect_timeout=connect_timeout,
    )
    await FlowChain("deploy-kvm-host", STEPS).run(ctx)
    assert ctx.facts is not None and ctx.credentials is not None and ctx.bundle is not None
    return DeployResult(
        ctx.facts, ctx.credentials.username, ctx.bundle.build_id, ctx.playbook_changed, ctx.seconds
    )
