"""ringstack-ctl's own supervision of a management node, for machines without systemd (namespace
hosts, containers): ``ringstack-ctl start --supervise`` runs the node as a child process and keeps
it running.

The node's exit code says what happened (``ringstack-ctl start``):

- ``EXIT_STOPPED`` (0): stopped on request (SIGTERM, ``ringstack-ctl stop``), everything drained;
- ``EXIT_UNDRAINED`` (5): stopped on request, but the drain deadline passed with work running;
- ``EXIT_RESTART`` (75): ``ringstack-ctl restart`` asked it to drain, hand over and start again;
- anything else, or a signal: a crash.

The supervisor ends with the node after a requested stop, starts it again at once after a requested
restart, and after a crash starts it again with exponential back-off (1 s doubling to 30 s; back to
1 s once an incarnation has run a minute). SIGTERM/SIGINT to the supervisor stop the node (the drain
path) and then the supervisor; SIGHUP restarts the node (drain, hand over, start again). Under
systemd the unit does the same with ``Restart=on-failure`` and ``RestartPreventExitStatus=5``.

Each supervised node has a run directory (``--run-dir``, default ``$RINGSTACK_RUN_DIR`` or
``/run/ringstack``) holding ``supervisor.pid``, ``supervisor.log`` (the node's output and the
supervisor's own lines, when detached) and ``state.json``: the supervisor's pid, the current node
process's pid and uuid, ``state`` (starting, ready, backoff, stopped), ``restarts`` and
``lastExit``. Every incarnation is a new node (a new uuid): the ring hands the old one's partitions
over as for any node that leaves.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

EXIT_STOPPED = 0
EXIT_UNDRAINED = 5
EXIT_RESTART = 75
SUPERVISED_ENV = "RINGSTACK_SUPERVISED"  # the supervisor's pid, in the node's environment
BACKOFF_INITIAL = 1.0
BACKOFF_MAX = 30.0
STABLE_AFTER = 60.0
_READY = re.compile(r"node ([0-9a-f]{32}) ready: ")


def default_run_dir() -> Path:
    return Path(os.environ.get("RINGSTACK_RUN_DIR") or "/run/ringstack")


def supervisor_name() -> str | None:
    """What starts this process again after ``EXIT_RESTART``: ringstack-ctl, systemd, or nothing."""
    if os.environ.get(SUPERVISED_ENV):
        return "ringstack-ctl"
    if os.environ.get("INVOCATION_ID"):  # systemd sets it for every unit it runs
        return "systemd"
    return None


def die_with_supervisor() -> None:
    """In a supervised node: SIGTERM (the drain path) when the supervisor dies, even by SIGKILL,
    so that no node runs on unsupervised and unseen (Linux's PR_SET_PDEATHSIG)."""
    import ctypes

    supervisor = os.environ.get(SUPERVISED_ENV, "")
    if not supervisor.isdigit():
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
    if os.getppid() != int(supervisor):  # it died before the line above
        os.kill(os.getpid(), signal.SIGTERM)


@dataclass
class State:
    supervisorPid: int
    state: str = "starting"
    nodePid: int | None = None
    nodeUuid: str | None = None
    restarts: int = 0
    lastExit: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (our own exited child, not yet reaped) is not running.
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    return True


def read_state(run_dir: Path) -> State | None:
    """The run directory's state, or None when no supervisor runs there now."""
    try:
        data = json.loads((run_dir / "state.json").read_text())
        state = State(**data)
    except (OSError, ValueError, TypeError):
        return None
    if not pid_alive(state.supervisorPid):
        return None
    return state


class Supervisor:
    def __init__(
        self,
        argv: list[str],
        run_dir: Path,
        out: TextIO,
        backoff_initial: float = BACKOFF_INITIAL,
        backoff_max: float = BACKOFF_MAX,
        stable_after: float = STABLE_AFTER,
    ) -> None:
        self.argv = argv
        self.run_dir = run_dir
        self.out = out
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.stable_after = stable_after
        self.state = State(supervisorPid=os.getpid())
        self._stop = threading.Event()
        self._restart = False
        self._child: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()

    def say(self, message: str) -> None:
        with self._lock:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            self.out.write(f"{stamp} supervisor: {message}\n")
            self.out.flush()

    def _save(self) -> None:
        tmp = self.run_dir / "state.json.tmp"
        tmp.write_text(json.dumps(asdict(self.state)))
        tmp.replace(self.run_dir / "state.json")

    def _signalled(self, signum: int, _frame: Any) -> None:
        child = self._child
        if signum == signal.SIGHUP:
            self._restart = True
        else:
            self._stop.set()
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)  # the node's drain path

    def _pump(self, child: subprocess.Popen[str]) -> None:
        assert child.stdout is not None
        for line in child.stdout:
            with self._lock:
                self.out.write(line)
                self.out.flush()
            found = _READY.search(line)
            if found and self.state.nodePid == child.pid:
                self.state.nodeUuid, self.state.state = found.group(1), "ready"
                self._save()

    def run(self) -> int:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "supervisor.pid").write_text(f"{os.getpid()}\n")
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._signalled)
        delay = self.backoff_initial
        code = EXIT_STOPPED
        try:
            while not self._stop.is_set():
                started = time.monotonic()
                child = subprocess.Popen(
                    self.argv,
                    env={**os.environ, SUPERVISED_ENV: str(os.getpid()), "PYTHONUNBUFFERED": "1"},
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                    errors="replace",
                )
                self._child = child
                self.state.nodePid, self.state.nodeUuid, self.state.state = child.pid, None, "starting"
                self._save()
                self.say(f"node process {child.pid} started")
                pump = threading.Thread(target=self._pump, args=(child,), daemon=True)
                pump.start()
                code = child.wait()
                pump.join(5)
                self._child = None
                self.state.lastExit = code
                self.state.history = [*self.state.history[-9:], {"pid": child.pid, "exit": code}]
                if self._stop.is_set():
                    self.say(f"node process {child.pid} exited ({code}) on request")
                    break
                if self._restart or code == EXIT_RESTART:
                    self._restart = False
                    self.state.restarts += 1
                    delay = self.backoff_initial
                    self.say(f"node process {child.pid} exited ({code}) to restart; starting it again")
                    continue
                if code in (EXIT_STOPPED, EXIT_UNDRAINED):
                    self.say(f"node process {child.pid} stopped ({code})")
                    break
                if time.monotonic() - started >= self.stable_after:
                    delay = self.backoff_initial
                self.state.state = "backoff"
                self.state.restarts += 1
                self._save()
                self.say(f"node process {child.pid} crashed ({code}); starting it again in {delay:g} s")
                if self._stop.wait(delay):
                    break
                delay = min(delay * 2, self.backoff_max)
        finally:
            self.state.state, self.state.nodePid = "stopped", None
            self._save()
            with contextlib.suppress(OSError):
                (self.run_dir / "supervisor.pid").unlink()
        return code


def node_argv(config_path: str | None) -> list[str]:
    argv = [sys.executable, "-m", "mgmt.cli.ctl", "start"]
    if config_path:
        argv += ["--config", config_path]
    return argv


def spawn_detached(config_path: str | None, run_dir: Path) -> int:
    """Start a supervisor in its own session, its output in ``run_dir/supervisor.log``; its pid."""
    run_dir.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "mgmt.cli.ctl", "start", "--supervise", "--run-dir", str(run_dir)]
    if config_path:
        argv += ["--config", config_path]
    with open(run_dir / "supervisor.log", "a", encoding="utf-8") as log:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    return proc.pid


def wait_for(run_dir: Path, check: Any, timeout: float, pid: int | None = None) -> State | None:
    """Poll the state file (written by another process) until ``check(state)``; None on timeout or
    when the supervisor ``pid`` ended."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = read_state(run_dir)
        if state is not None and check(state):
            return state
        if pid is not None and not pid_alive(pid):
            return None
        time.sleep(0.1)
    return None


def log_tail(run_dir: Path, lines: int = 30) -> str:
    try:
        return "\n".join((run_dir / "supervisor.log").read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
