"""Helpers for integration tests: real worker processes and polling."""

from __future__ import annotations

import ast
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pika
import pika.exceptions
import pytest
from dramatiq.common import dq_name, xq_name

REPO = Path(__file__).resolve().parents[1]
# The test run's PostgreSQL server (without a database); each run makes its own database.
PG_SERVER_URL = os.environ.get("TEST_PG_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432")
WORKER_READY = "Worker process is ready for action."


def worker_env(**extra: str) -> dict[str, str]:
    """The environment of a worker of this test run (fast retries, quick tenant pick-up)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKYARD_")}
    env.update(
        {
            "DATABASE_URL": os.environ["DATABASE_URL"],
            "BROKER_URL": os.environ["BROKER_URL"],
            "TASKYARD_QUEUE_PREFIX": os.environ["TASKYARD_QUEUE_PREFIX"],
            "TASKYARD_TENANT_REFRESH_SECONDS": "0.5",
            "TASKYARD_MIN_BACKOFF_MS": "50",
            "TASKYARD_MAX_BACKOFF_MS": "200",
            "TASKYARD_HTTP_READ_TIMEOUT": "2",
            # Test servers listen on 127.0.0.1; the URL guard refuses it by default.
            "TASKYARD_HTTP_ALLOW_PRIVATE": "true",
            # The run's locker key (tests/conftest.py): every worker reads every tenant's secrets.
            "TASKYARD_SECRET_KEYS": os.environ.get("TASKYARD_SECRET_KEYS", ""),
        }
    )
    env.update(extra)
    return env


class WorkerProcess:
    """A `dramatiq actors` process of this test run, stopped by its own pid."""

    def __init__(
        self,
        log_path: Path,
        env: dict[str, str],
        threads: int = 4,
        *,
        modules: Sequence[str] = (),
        options: Sequence[str] = (),
    ) -> None:
        """Start it: `modules` are loaded besides `actors`, `options` go to `dramatiq`."""
        self.log_path = log_path
        self._log = log_path.open("wb")
        dramatiq_bin = Path(sys.executable).with_name("dramatiq")
        self.proc = subprocess.Popen(
            [
                str(dramatiq_bin),
                "actors",
                *modules,
                *("--processes", "1", "--threads", str(threads)),
                *options,
            ],
            cwd=REPO,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log(self) -> str:
        """Everything the worker printed so far."""
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until the worker says it is ready, or fail with its log."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if WORKER_READY in self.log():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        self.stop()
        pytest.fail(f"worker did not start:\n{self.log()[-4000:]}")

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then SIGKILL after `timeout`; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL the whole process group (the main process and its worker child), at once."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self._log.close()


def loaded_by(code: str, modules: Sequence[str]) -> tuple[list[str], str]:
    """Which of `modules` a fresh interpreter has imported after running `code`, and its output.

    For the tests that keep a module's imports light (the command line's, the
    metrics server's): what one process loads, not what this test run has.
    """
    wanted = list(modules)
    probe = f"{code}\nimport sys\nprint('loaded:', [m for m in {wanted!r} if m in sys.modules])\n"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    found = next((line for line in reversed(lines) if line.startswith("loaded: ")), None)
    assert found is not None, result.stdout[-2000:]
    return list(ast.literal_eval(found.removeprefix("loaded: "))), result.stdout


def wait_for(
    check: Callable[[], Any],
    timeout: float = 30.0,
    what: str = "condition",
    state: Callable[[], str] | None = None,
) -> Any:
    """Poll `check` until it returns something truthy, or fail after `timeout` seconds.

    `state`, when given, describes what was found instead; the failure shows it.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    found = f"; found: {state()}" if state is not None else ""
    pytest.fail(f"timed out after {timeout}s waiting for {what}{found}")


IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _reachable(url: str, default_port: int) -> bool:
    parts = urlsplit(url.replace("postgresql+psycopg2", "postgresql"))
    try:
        with socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or default_port), 2
        ):
            return True
    except OSError:
        return False


def require_servers() -> None:
    """Skip (or, in CI, fail) a test that needs RabbitMQ and PostgreSQL when one is down."""
    missing = [
        name
        for name, url, port in (
            ("PostgreSQL", os.environ["DATABASE_URL"], 5432),
            ("RabbitMQ", os.environ["BROKER_URL"], 5672),
        )
        if not _reachable(url, port)
    ]
    if missing:
        message = f"{' and '.join(missing)} not reachable on localhost"
        if IN_CI:
            pytest.fail(message + " (CI needs them: .ci/run starts them)")
        pytest.skip(message)


# Where free_port looks: below the kernel's ephemeral range, whose ports it gives to
# outgoing connections (read from /proc where there is one).
SERVER_PORTS_FROM = 20_000


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now, for a server a test starts.

    Taken below the ephemeral range: a server that stops and starts again on its
    port (a halted RabbitMQ node, a restarted PostgreSQL) must not find it taken
    meanwhile by some client's outgoing connection, which the kernel gives a port
    of that range.  A port nothing listens on also makes a "refused" address.
    """
    rng = random.Random()
    for _ in range(1_000):
        port = rng.randrange(SERVER_PORTS_FROM, _ephemeral_start())
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port from {SERVER_PORTS_FROM} to {_ephemeral_start()}")


@contextmanager
def private_database(*, migrated: bool = True) -> Iterator[str]:
    """The URL of a database of its own, dropped after: migrated to head, or (`migrated`
    false) not created yet.

    For a test whose rows other processes of the run must not see: the shared
    worker sweeps the run database's outbox and serves every tenant in it.
    """
    from sqlalchemy import create_engine, pool, text
    from sqlalchemy.engine import make_url

    from db.migrate import upgrade_to_head

    url = make_url(os.environ["DATABASE_URL"])
    url = url.set(database=f"{url.database}_{uuid.uuid4().hex[:8]}")
    rendered = url.render_as_string(hide_password=False)
    try:
        if migrated:
            upgrade_to_head(rendered)
        yield rendered
    finally:
        server = create_engine(
            url.set(database="postgres"), isolation_level="AUTOCOMMIT", poolclass=pool.NullPool
        )
        try:
            with server.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)'))
        finally:
            server.dispose()


def delete_queues(broker_url: str, names: Iterable[str]) -> None:
    """Delete queues of this test run from the shared RabbitMQ (a missing one is no error)."""
    connection = pika.BlockingConnection(pika.URLParameters(broker_url))
    try:
        channel = connection.channel()
        for name in names:
            channel.queue_delete(name)
    finally:
        connection.close()


def queue_family(names: Iterable[str]) -> list[str]:
    """Each queue with its delay (.DQ) and dead-letter (.XQ) queue."""
    return [each for name in names for each in (name, dq_name(name), xq_name(name))]


def delete_prefix_queues(settings: Any, engine: Any) -> None:
    """Delete the queues under `settings.queue_prefix`: the system queue and every tenant's.

    Each with its delay (.DQ) and dead-letter (.XQ) queue; the tenants are read from `engine`.
    """
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from db.models import Tenant

    with Session(engine) as session:
        tenants = list(session.scalars(select(Tenant.id)))
    # Plain Dramatiq actors' queue (the test actors use `default`) is under the prefix too.
    names = [
        settings.system_queue,
        f"{settings.queue_prefix}default",
        *(settings.tenant_queue(t) for t in tenants),
    ]
    delete_queues(settings.broker_url, queue_family(names))


def queue_state(broker_url: str, name: str) -> tuple[int, int] | None:
    """A queue's (ready messages, consumers), or None when it does not exist."""
    connection = pika.BlockingConnection(pika.URLParameters(broker_url))
    try:
        method = connection.channel().queue_declare(name, passive=True).method
        return int(method.message_count), int(method.consumer_count)
    except pika.exceptions.ChannelClosedByBroker:
        return None
    finally:
        connection.close()


def dead_letter_arguments(name: str) -> dict[str, object]:
    """A queue's arguments as Dramatiq declares them: dead letters go to its `.XQ` queue."""
    return {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": f"{name}.XQ"}


def message_count(broker_url: str, name: str) -> int:
    """The ready messages of an existing queue."""
    state = queue_state(broker_url, name)
    assert state is not None, f"queue {name} does not exist"
    return state[0]


def queues_named(prefix: str) -> list[str] | None:
    """The shared RabbitMQ's queues whose name starts with `prefix`, read with `rabbitmqctl`
    (AMQP cannot list queues); None where `rabbitmqctl` is missing or cannot reach the node.

    The `rabbitmqctl` on PATH: Debian's wrapper runs it as the node's user, with its cookie.
    """
    rabbitmqctl = shutil.which("rabbitmqctl")
    if rabbitmqctl is None:
        return None
    try:
        listed = subprocess.run(
            [rabbitmqctl, "list_queues", "name", "-q", "--no-table-headers"],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return [name for name in listed.stdout.split() if name.startswith(prefix)]
