"""A private RabbitMQ node for one test session: its own name, ports and directory, its own pid.

Scenarios that stop a server, or change its settings, use such a node and
never the machine's shared RabbitMQ.  The node runs as the `rabbitmq` user
(as the packaged server does), so its directory is created straight under the
system temp dir (pytest's own tmp dirs are private to root) and handed over
to that user.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import IO

import pika
import pika.exceptions

from tests.support import free_port

# Debian's scripts; its /usr/sbin wrappers `su` into a session of their own (out of
# reach of our process group) and write the shared node's startup log.
DEBIAN_RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")
RABBITMQ_USER = "rabbitmq"
# A node boots in about 10 s here; a slow CI machine gets some slack.
BOOT_TIMEOUT_SECONDS = 90.0


def rabbitmq_bin() -> Path | None:
    """The directory of `rabbitmq-server` and `rabbitmqctl`, if RabbitMQ is installed."""
    if (DEBIAN_RABBITMQ_BIN / "rabbitmq-server").exists():
        return DEBIAN_RABBITMQ_BIN
    found = shutil.which("rabbitmq-server")
    return Path(found).parent if found is not None else None


class RabbitNode:
    """One private RabbitMQ node: started with `start()`, stopped (by its own pid) with `stop()`.

    `halt()` stops it keeping its data, and `start()` brings it back on the same port.

    `config` lines are added to its rabbitmq.conf (`{"consumer_timeout": "2000"}`);
    `advanced` is the text of its advanced.config, for settings rabbitmq.conf
    does not know.
    """

    def __init__(
        self,
        *,
        config: Mapping[str, str] | None = None,
        advanced: str = "[].",
        cookie: str | None = None,
    ) -> None:
        self.name = f"taskyard-{uuid.uuid4().hex[:10]}@localhost"
        self.port = free_port()
        self.dist_port = free_port()
        self.base = Path(tempfile.mkdtemp(prefix="taskyard-rabbit-"))
        self.log_path = self.base / "log" / "node.log"
        self.config = {
            "listeners.tcp.default": f"127.0.0.1:{self.port}",
            "loopback_users": "none",
            **(config or {}),
        }
        self.advanced = advanced
        # Nodes of one cluster share their Erlang cookie; a lone node makes its own.
        self.cookie = cookie
        bin_dir = rabbitmq_bin()
        if bin_dir is None:
            raise RuntimeError("rabbitmq-server is not installed")
        self.bin = bin_dir
        # As root, the node runs as the packaged server does, and its CLI too (same cookie).
        self.run_as = RABBITMQ_USER if os.geteuid() == 0 else None
        self.proc: subprocess.Popen[bytes] | None = None
        self._output: IO[bytes] | None = None

    @property
    def url(self) -> str:
        """The node's AMQP URL (guest/guest, default vhost)."""
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"

    def env(self) -> dict[str, str]:
        """The environment of the node's server and CLI processes."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("RABBITMQ_")}
        env.update(
            {
                # Its own home, so its own Erlang cookie: the CLI reaches this node only.
                "HOME": str(self.base),
                "RABBITMQ_NODENAME": self.name,
                "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
                "RABBITMQ_NODE_PORT": str(self.port),
                "RABBITMQ_DIST_PORT": str(self.dist_port),
                "RABBITMQ_BASE": str(self.base),
                "RABBITMQ_MNESIA_BASE": str(self.base / "mnesia"),
                "RABBITMQ_LOG_BASE": str(self.base / "log"),
                "RABBITMQ_LOGS": str(self.log_path),
                "RABBITMQ_CONFIG_FILE": str(self.base / "rabbitmq.conf"),
                "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.base / "advanced.config"),
                "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.base / "enabled_plugins"),
                "RABBITMQ_PID_FILE": str(self.base / "node.pid"),
            }
        )
        return env

    def start(self) -> None:
        """Write the node's files, start it, and wait until a client can connect.

        After `halt()`, this starts the same node again: same name, port and
        directory, so its durable queues and persistent messages are back.
        """
        (self.base / "mnesia").mkdir(exist_ok=True)
        (self.base / "log").mkdir(exist_ok=True)
        lines = [f"{key} = {value}" for key, value in self.config.items()]
        (self.base / "rabbitmq.conf").write_text("\n".join(lines) + "\n")
        (self.base / "advanced.config").write_text(self.advanced + "\n")
        (self.base / "enabled_plugins").write_text("[].\n")
        if self.cookie is not None:
            cookie = self.base / ".erlang.cookie"
            cookie.write_text(self.cookie)
            cookie.chmod(0o400)
        self._hand_over()
        output = (self.base / "server.out").open("ab")
        self._output = output
        self.proc = subprocess.Popen(
            [str(self.bin / "rabbitmq-server")],
            cwd=self.base,
            env=self.env(),
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            user=self.run_as,
            group=self.run_as,
            extra_groups=[] if self.run_as else None,
        )
        self._wait_ready()

    def ctl(self, *args: str, timeout: float = 60.0) -> str:
        """Run `rabbitmqctl -n <this node> ...`; returns its output."""
        result = subprocess.run(
            [str(self.bin / "rabbitmqctl"), "-n", self.name, "-q", *args],
            cwd=self.base,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
            user=self.run_as,
            group=self.run_as,
            extra_groups=[] if self.run_as else None,
        )
        return str(result.stdout)

    def log(self) -> str:
        """The node's log so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def halt(self, timeout: float = 30.0) -> None:
        """SIGTERM to the node's own process group, SIGKILL after `timeout`; its data stays."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        if self._output is not None:
            self._output.close()
            self._output = None

    def kill(self) -> None:
        """SIGKILL to the node's process group, as a machine that dies; its data stays."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        if self._output is not None:
            self._output.close()
            self._output = None

    def join(self, other: RabbitNode) -> None:
        """Make this running node a member of `other`'s cluster (same cookie needed)."""
        self.ctl("stop_app")
        self.ctl("join_cluster", other.name)
        self.ctl("start_app")
        self._wait_ready()

    def stop(self, timeout: float = 30.0) -> None:
        """Halt the node and remove its directory."""
        self.halt(timeout)
        shutil.rmtree(self.base, ignore_errors=True)

    def _hand_over(self) -> None:
        if os.geteuid() != 0:
            return
        user = pwd.getpwnam(RABBITMQ_USER)
        for path in [self.base, *self.base.rglob("*")]:
            os.chown(path, user.pw_uid, user.pw_gid)

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + BOOT_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if self._accepts_clients():
                return
            time.sleep(0.5)
        output = (self.base / "server.out").read_text(errors="replace")
        log = self.log()
        self.stop()
        raise RuntimeError(
            f"RabbitMQ node {self.name} did not start on port {self.port}:\n"
            f"{output[-3000:]}\n{log[-3000:]}"
        )

    def _accepts_clients(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), 1):
                pass
        except OSError:
            return False
        try:
            connection = pika.BlockingConnection(pika.URLParameters(self.url))
        except pika.exceptions.AMQPError:
            return False
        connection.close()
        return True
