"""Each worker process says every few seconds that it lives, what it serves, and what it runs.

The beat is the one place where "running" is written: which message each
thread runs, since when. A job's own record is not written when it starts.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dramatiq import Middleware
from dramatiq.broker import Broker, MessageProxy
from dramatiq.worker import Worker
from sqlalchemy.orm import Session, sessionmaker

from middleware.probes import ProcessProbe, remove_probe, write_probe
from services.errors import valid_tenant_id
from services.job_views import RunningEntry
from services.workers import beat, remove_worker
from transport.consumer import is_delay_queue

# The readiness probe reads the database's migration revision this often.
SCHEMA_CHECK_SECONDS = 30.0


def _metrics_dir() -> Path | None:
    """The command's directory, shared with its exposition server (set by `Metrics`)."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    return Path(directory) if directory else None


class Heartbeat(Middleware):
    """Upserts this process's `workers` row every `interval_seconds`; deletes it at shutdown.

    The row carries what each worker thread runs (`running`), tracked in memory
    by the message hooks: one statement per beat, none per job. A job started
    less than one beat ago is therefore not listed yet.

    A beat that fails (the database is away) is logged and the next one tries
    again: the worker keeps working, and `taskyard workers` sees it go stale.
    """

    def __init__(
        self,
        *,
        session_factory: sessionmaker[Session],
        interval_seconds: float = 2.0,
        check_schema: Callable[[], None] | None = None,
        probe_dir: Callable[[], Path | None] = _metrics_dir,
        host: str = "",
    ) -> None:
        self.logger = logging.getLogger(type(self).__name__)
        self.session_factory = session_factory
        self.interval_seconds = interval_seconds
        # For the readiness probe: whether the database's migrations match this code,
        # checked every SCHEMA_CHECK_SECONDS (the last answer and when it was read).
        self.check_schema = check_schema
        self._schema: tuple[float, str | None] | None = None
        self.probe_dir = probe_dir
        self.host = host or socket.gethostname()
        self.pid = os.getpid()
        self.started_at = dt.datetime.now(dt.UTC)
        self.worker_id = f"{self.host}:{self.pid}:{int(self.started_at.timestamp())}"
        self._lock = threading.Lock()
        # By message id, not a counter: a skipped message reaches after_skip_message
        # even when this middleware's before hook never saw it.
        self._running: dict[str, RunningEntry] = {}
        self._worker: Worker | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def in_progress(self) -> int:
        """How many messages this process's threads are running now."""
        with self._lock:
            return len(self._running)

    def running(self) -> list[RunningEntry]:
        """What this process's threads run now, the longest running first."""
        with self._lock:
            entries = list(self._running.values())
        return sorted(entries, key=lambda entry: entry["started_at"])

    def queues(self) -> list[str]:
        """The queues this worker consumes (not their delay queues)."""
        worker = self._worker
        names = list(worker.consumers) if worker is not None else []
        return sorted(name for name in names if not is_delay_queue(name))

    def beat_once(self) -> bool:
        """Write this process's row now; False (and a log line) when the database refused."""
        worker = self._worker
        running = self.running()
        try:
            with self.session_factory.begin() as session:
                beat(
                    session,
                    worker_id=self.worker_id,
                    host=self.host,
                    pid=self.pid,
                    queues=self.queues(),
                    threads=worker.worker_threads if worker is not None else 0,
                    in_progress=len(running),
                    running=running,
                    started_at=self.started_at,
                    now=dt.datetime.now(dt.UTC),
                )
        except Exception:
            self.logger.warning("Could not write the heartbeat; trying again", exc_info=True)
            self._write_probe(worker, database=False)
            return False
        self._write_probe(worker, database=True)
        return True

    def _schema_problem(self) -> str | None:
        """Why the database's migrations do not match this code (None: they do), cached."""
        if self.check_schema is None:
            return None
        now = time.monotonic()
        if self._schema is not None and now - self._schema[0] < SCHEMA_CHECK_SECONDS:
            return self._schema[1]
        try:
            self.check_schema()
            problem = None
        except Exception as exc:
            problem = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        self._schema = (now, problem)
        return problem

    def _write_probe(self, worker: Worker | None, *, database: bool) -> None:
        """Write this process's probe file (`middleware.probes`); never fails the beat."""
        directory = self.probe_dir()
        if directory is None or worker is None:
            return
        threads = list(getattr(worker, "workers", []))
        # One consumer thread may serve many queues (Taskyard's multiplexing one).
        consumers = list({id(c): c for c in getattr(worker, "consumers", {}).values()}.values())
        schema_error = self._schema_problem() if database else None
        try:
            write_probe(
                directory,
                ProcessProbe(
                    pid=self.pid,
                    at=time.time(),
                    interval=self.interval_seconds,
                    worker_threads=len(threads),
                    worker_threads_alive=sum(1 for t in threads if t.is_alive()),
                    consumers=len(consumers),
                    consumers_alive=sum(1 for c in consumers if c.is_alive()),
                    database=database,
                    schema=schema_error is None,
                    schema_error=schema_error,
                ),
            )
        except OSError:
            self.logger.warning("Could not write the probe file in %s", directory, exc_info=True)

    def after_worker_boot(self, broker: Broker, worker: Worker) -> None:
        """Write the first beat, then one every interval from a daemon thread."""
        # A process forked after import has another pid than the one at construction.
        self.pid = os.getpid()
        self.worker_id = f"{self.host}:{self.pid}:{int(self.started_at.timestamp())}"
        self._worker = worker
        self._stop.clear()
        self.beat_once()
        self._thread = threading.Thread(target=self._loop, name="taskyard-heartbeat", daemon=True)
        self._thread.start()

    def before_worker_shutdown(self, broker: Broker, worker: Worker) -> None:
        """Stop beating and delete this process's row: it no longer serves anything."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval_seconds + 5)
        try:
            with self.session_factory.begin() as session:
                remove_worker(session, self.worker_id)
        except Exception:
            self.logger.warning("Could not delete the heartbeat row", exc_info=True)
        directory = self.probe_dir()
        if directory is not None:
            remove_probe(directory, self.pid)

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        """Note the message as in progress on this thread (the next beat writes it)."""
        kwargs = message.kwargs
        tenant_id = kwargs.get("tenant_id") if isinstance(kwargs, dict) else None
        thread = threading.current_thread()
        entry: RunningEntry = {
            "message_id": str(message.message_id),
            "actor": str(message.actor_name),
            "queue": str(message.queue_name),
            "tenant_id": tenant_id if valid_tenant_id(tenant_id) else None,
            "thread": thread.name,
            "thread_id": thread.ident,
            "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="microseconds"),
        }
        with self._lock:
            self._running[entry["message_id"]] = entry

    def after_process_message(
        self,
        broker: Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        """The message is no longer in progress."""
        with self._lock:
            self._running.pop(str(message.message_id), None)

    def after_skip_message(self, broker: Broker, message: MessageProxy) -> None:
        """A skipped message is no longer in progress either."""
        with self._lock:
            self._running.pop(str(message.message_id), None)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_seconds):
            self.beat_once()
