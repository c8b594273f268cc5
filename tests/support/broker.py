"""A private RabbitMQ node for tests that stop, restart or cut the broker.

The machine's broker is shared by every test and helper running in parallel: a test that needs the
broker to go away starts its own node instead, on free ports, with its own node name, database
(mnesia), logs, config, enabled plugins (the event exchange, as in production) and Erlang cookie,
all under one temporary directory removed afterwards::

    with PrivateBroker() as broker:
        url = broker.url                 # amqp://guest:guest@127.0.0.1:<port>/
        broker.stop_app()                # the broker goes away (connections refused)
        broker.start_app()               # ... and comes back, durable queues and all
        broker.close_all_connections()   # every client connection force-closed

``stop_app``/``start_app`` stop RabbitMQ inside its Erlang VM: clients see exactly what a stopped
broker shows them (connections reset, then refused), and it comes back in a second or two instead
of an Erlang VM's boot time. ``restart`` stops and starts the whole process.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from types import TracebackType

RABBITMQ_BIN = Path(os.environ.get("RINGSTACK_TEST_RABBITMQ_BIN", "/usr/lib/rabbitmq/bin"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateBroker:
    def __init__(self, *, start_timeout: float = 120.0) -> None:
        self.start_timeout = start_timeout
        self.name = f"rstest{os.getpid()}x{uuid.uuid4().hex[:6]}"
        self.nodename = f"{self.name}@localhost"
        self.port = free_port()
        self.dist_port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix=f"{self.name}-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def _env(self) -> dict[str, str]:
        d = self.dir
        return {
            **{k: v for k, v in os.environ.items() if not k.startswith("RABBITMQ_")},
            "HOME": str(d),  # the Erlang cookie is made here: rabbitmqctl below uses the same HOME
            "RABBITMQ_NODENAME": self.nodename,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
            "RABBITMQ_LOG_BASE": str(d / "log"),
            "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq.conf"),
            "RABBITMQ_CONF_ENV_FILE": str(d / "rabbitmq-env.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(d / "rabbitmq.pid"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "ERL_FLAGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }

    def start(self) -> PrivateBroker:
        d = self.dir
        (d / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = 127.0.0.1:{self.port}\n"
            "loopback_users.guest = true\n"
            "log.console = false\n"
            "log.file.level = warning\n"
        )
        (d / "rabbitmq-env.conf").write_text("")
        (d / "enabled_plugins").write_text("[rabbitmq_event_exchange].\n")
        log = open(d / "server.out", "wb")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(
            [str(RABBITMQ_BIN / "rabbitmq-server")],
            env=self._env(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        # await_startup fails at once while the Erlang node is not registered yet: wait for that.
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"RabbitMQ node {self.nodename} exited at start:\n{self.log_tail()}")
            try:
                self.ctl(
                    "await_startup",
                    "--timeout",
                    str(int(self.start_timeout)),
                    timeout=self.start_timeout + 10,
                )
                return self
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def ctl(self, *args: str, timeout: float = 60.0) -> str:
        """``rabbitmqctl`` against this node."""
        done = subprocess.run(
            [str(RABBITMQ_BIN / "rabbitmqctl"), "-n", self.nodename, *args],
            env=self._env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"rabbitmqctl {' '.join(args)} failed: {done.stderr or done.stdout}\n{self.log_tail()}"
            )
        return done.stdout

    def stop_app(self) -> None:
        self.ctl("stop_app")

    def start_app(self) -> None:
        self.ctl("start_app")
        self.ctl("await_startup", "--timeout", "60", timeout=70)

    def close_all_connections(self, reason: str = "closed by a ringstack test") -> None:
        self.ctl("close_all_connections", reason)

    def connections(self) -> int:
        out = self.ctl("list_connections", "pid", "--no-table-headers", "--quiet")
        return len([line for line in out.splitlines() if line.strip()])

    def restart(self) -> None:
        """Stop the whole node (its Erlang VM) and start it again on the same ports and data."""
        self._stop_process()
        self.start()

    def log_tail(self, lines: int = 30) -> str:
        out = self.dir / "server.out"
        return "\n".join(out.read_text(errors="replace").splitlines()[-lines:]) if out.exists() else ""

    def _stop_process(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            self.ctl("stop", timeout=60)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def close(self) -> None:
        self._stop_process()
        # epmd (shared by every Erlang node of the machine) forgets the node by itself.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                shutil.rmtree(self.dir)
                return
            except OSError:
                time.sleep(0.1)

    def __enter__(self) -> PrivateBroker:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
