"""The bench run's own database, queues and worker processes, and what the machine is."""

from __future__ import annotations

import argparse
import os
import platform
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

import pika
from sqlalchemy import create_engine, text

from bench.bodies import Tally, read_tally
from bench.procstat import cpu_seconds, threads

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PG_SERVER_URL = os.environ.get("BENCH_PG_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432")
BROKER_URL = os.environ.get("BROKER_URL") or "amqp://guest:guest@127.0.0.1:5672/%2F"


class BenchError(RuntimeError):
    """A bench run could not measure what it set out to (a worker died, a run timed out)."""


def unreachable() -> list[str]:
    """The servers the bench needs that do not answer, each with what to do about it."""
    problems = []
    for name, url, port, variable in (
        ("PostgreSQL", PG_SERVER_URL, 5432, "BENCH_PG_URL"),
        ("RabbitMQ", BROKER_URL, 5672, "BROKER_URL"),
    ):
        parts = urlsplit(url.replace("postgresql+psycopg2", "postgresql"))
        host, port = parts.hostname or "127.0.0.1", parts.port or port
        try:
            with socket.create_connection((host, port), 2):
                continue
        except OSError as exc:
            problems.append(
                f"{name} at {host}:{port} does not answer ({exc}); start it or set {variable}"
            )
    return problems


def positive(value: str) -> int:
    """argparse's type for a count or a size: a whole number of at least 1."""
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive whole number")
    return number


class BenchEnv:
    """One run of the harness: its id, database, queue names and scratch directory."""

    def __init__(self, scratch: Path) -> None:
        self.run_id = uuid.uuid4().hex[:8]
        self.database = f"taskyard_bench_{self.run_id}"
        self.database_url = f"{PG_SERVER_URL}/{self.database}"
        self.queue_prefix = f"b{self.run_id}."
        self.scratch = scratch
        self.queues: set[str] = set()
        scratch.mkdir(parents=True, exist_ok=True)

    def export(self) -> None:
        """Point Taskyard (imported after this) and the peers at this run's database and queues."""
        for name in [n for n in os.environ if n.startswith("TASKYARD_")]:
            del os.environ[name]
        os.environ.update(self.base_env())

    def base_env(self) -> dict[str, str]:
        """The variables every process of this run gets."""
        return {
            "DATABASE_URL": self.database_url,
            "BENCH_DATABASE_URL": self.database_url,
            "BROKER_URL": BROKER_URL,
            "TASKYARD_QUEUE_PREFIX": self.queue_prefix,
            "BENCH_DRAMATIQ_QUEUE": f"{self.queue_prefix}dramatiq",
            "BENCH_CELERY_QUEUE": f"{self.queue_prefix}celery",
            "BENCH_PROCRASTINATE_QUEUE": f"bench_{self.run_id}",
        }

    def drop_database(self) -> None:
        """Drop this run's database (whatever state it is in)."""
        admin = create_engine(f"{PG_SERVER_URL}/postgres", isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)'))
        admin.dispose()

    def delete_queues(self, names: Sequence[str]) -> None:
        """Delete queues (and their delay and dead-letter queues) from RabbitMQ."""
        connection = pika.BlockingConnection(pika.URLParameters(BROKER_URL))
        channel = connection.channel()
        for name in names:
            for queue in (name, f"{name}.DQ", f"{name}.XQ"):
                channel.queue_delete(queue)
        connection.close()

    def purge_queues(self, names: Sequence[str]) -> None:
        """Empty queues that exist; create none."""
        connection = pika.BlockingConnection(pika.URLParameters(BROKER_URL))
        for name in names:
            channel = connection.channel()
            try:
                channel.queue_purge(name)
                channel.close()
            except pika.exceptions.ChannelClosedByBroker:
                pass  # not declared yet
        connection.close()


class Worker:
    """A worker process of one system, started in its own session and stopped by its pid."""

    def __init__(
        self,
        env: BenchEnv,
        argv: list[str],
        extra_env: dict[str, str],
        tag: str,
        stop_signal: int = signal.SIGTERM,
    ) -> None:
        self.stop_signal = stop_signal
        self.argv = argv
        self.log_path = env.scratch / f"{tag}.log"
        self.done_base = env.scratch / f"{tag}.done"
        for old in env.scratch.glob(f"{tag}.done.*"):
            old.unlink()
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("TASKYARD_")}
        full_env.update(env.base_env())
        full_env.update(extra_env)
        full_env["BENCH_DONE_FILE"] = str(self.done_base)
        full_env["PYTHONPATH"] = str(REPO)
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            argv,
            cwd=REPO,
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log(self) -> str:
        """What the worker printed so far."""
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, marker: str, timeout: float = 60.0) -> None:
        """Wait until the log shows `marker`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if marker in self.log():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise BenchError(f"worker {self.argv} did not start:\n{self.log()[-3000:]}")

    def wait_settled(self, timeout: float = 10.0, window: float = 0.1, busy: float = 0.2) -> bool:
        """Wait until the worker's processes together use under `busy` of a core for `window` s.

        A "ready" line can come before a system's start-up is over (Taskyard's
        metrics server, a process of its own, was still importing for some 0.5 s
        of CPU); timing jobs then would charge that to the first of them.
        Returns False if the processes were still busy at `timeout`.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pids = self.pids()
            before = sum(cpu_or_zero(pid) for pid in pids)
            time.sleep(window)
            if sum(cpu_or_zero(pid) for pid in pids) - before < busy * window:
                return True
        return False

    def wait_done(self, kind: str, count: int, timeout: float) -> Tally:
        """Wait until `count` jobs of `kind` are done (see bench.bodies); fail with the log."""
        path = Path(f"{self.done_base}.{kind}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            tally = read_tally(path, count)
            if tally is not None:
                return tally
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        self.stop()
        raise BenchError(
            f"worker {self.argv[:3]} did not finish {count} {kind} jobs in {timeout:.0f}s:\n"
            f"{self.log()[-3000:]}"
        )

    def pids(self) -> list[int]:
        """The worker's process and its children (Dramatiq forks its worker processes)."""
        found = [self.proc.pid]
        for pid in list(found):
            children = Path(f"/proc/{pid}/task/{pid}/children")
            if children.exists():
                found += [int(p) for p in children.read_text().split()]
        return found

    def worker_pid(self) -> int:
        """The process that runs the jobs: of the command's children, the one of most threads.

        A Taskyard command has a second child, its metrics server (two or three
        threads), and the order in which /proc lists children is not fixed.  A
        system without children runs its jobs in its own process.
        """
        pids = self.pids()
        return max(pids[1:], key=threads) if len(pids) > 1 else pids[0]

    def stop(self, timeout: float = 20.0) -> None:
        """Signal the process group (SIGTERM unless told), SIGKILL it after `timeout`."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, self.stop_signal)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
            except ProcessLookupError:
                pass
        self._log.close()


def machine() -> dict[str, str]:
    """CPU, RAM and the versions of everything measured."""
    from importlib.metadata import version

    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    engine = create_engine(f"{PG_SERVER_URL}/postgres")
    with engine.connect() as conn:
        pg = str(conn.execute(text("SHOW server_version")).scalar())
    engine.dispose()
    connection = pika.BlockingConnection(pika.URLParameters(BROKER_URL))
    props = connection._impl.server_properties
    rabbit = props.get("version", b"?")
    connection.close()
    return {
        "Taskyard": _revision(),
        "CPU": f"{os.cpu_count()} x {cpu}",
        "RAM": f"{mem_kb / 1024 / 1024:.1f} GiB",
        "OS": platform.platform(),
        "Python": platform.python_version(),
        "Dramatiq": version("dramatiq"),
        "Celery": version("celery"),
        "procrastinate": version("procrastinate"),
        "SQLAlchemy": version("sqlalchemy"),
        "PostgreSQL": pg,
        "RabbitMQ": rabbit.decode() if isinstance(rabbit, bytes) else str(rabbit),
    }


def _revision() -> str:
    """The commit measured, and whether the work tree differed from it."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
        # The report itself is not what was measured: a previous run's copy does not count.
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!BENCHMARKS.md"],
            cwd=REPO,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown (no git)"
    if not head:
        return "unknown (not a git checkout)"
    return f"commit {head}" + (" plus uncommitted changes in the work tree" if dirty else "")


def cpu_or_zero(pid: int) -> float:
    """A process's CPU seconds, or 0 once it has gone."""
    try:
        return cpu_seconds(pid)
    except OSError:
        return 0.0
