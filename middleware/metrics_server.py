"""The metrics of one `dramatiq actors` command: its multiprocess directory and its HTTP server.

Worker processes write their samples to files in a directory shared by one
command (prometheus-client's multiprocess mode); a fork process of the same
command serves them merged on `/metrics`, together with what is measured
once per host rather than per process: queue depth and the outbox backlog.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, select, text

from db.models import OutboxMessage

# Loaded by the fork process (this module is its entry point): the log settings apply
# from its first line (see middleware/log_setup.py).
from middleware.log_setup import configure_logging
from middleware.metrics_labels import queue_label
from middleware.probes import LIVE_PATH, READY_PATH, probe_status
from services.store import STUCK_CAP, StoreStats, store_stats
from transport.queue_depth import read_ready

# Directories are named after the command's main process: its pid and start time.
DIR_PREFIX = "taskyard-metrics-"
# A second command on the same host tries the next ports, this many in all.
PORT_TRIES = 10
# Queue depth and outbox backlog are measured at most this often (a scrape in
# between gets the last values), so Prometheus never loads RabbitMQ or PostgreSQL.
HOST_METRICS_EVERY_SECONDS = 15.0
# The outbox count gives up after this long rather than hold a scrape.
OUTBOX_COUNT_TIMEOUT_MS = 2_000

logger = logging.getLogger("MetricsServer")

# Called before each scrape: a worker in the serving process (the demo's) writes out
# the metrics it holds in memory (see `Metrics.flush`).
BEFORE_SCRAPE: list[Callable[[], None]] = []


def _start_ticks(pid: int) -> str:
    """The start time of process `pid` in clock ticks (Linux), so a reused pid differs."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "0"
    return stat.rsplit(")", 1)[1].split()[19]


def command_dir(base: str | None = None, main_pid: int | None = None) -> Path:
    """The directory shared by the processes of this `dramatiq actors` command."""
    pid = os.getppid() if main_pid is None else main_pid
    return Path(base or tempfile.gettempdir()) / f"{DIR_PREFIX}{pid}-{_start_ticks(pid)}"


def remove_stale_dirs(base: str | None = None) -> list[Path]:
    """Remove the directories of commands that are no longer running; returns them."""
    removed = []
    for path in Path(base or tempfile.gettempdir()).glob(f"{DIR_PREFIX}*"):
        pid_text, _, ticks = path.name.removeprefix(DIR_PREFIX).partition("-")
        if not pid_text.isdigit():
            continue
        pid = int(pid_text)
        alive = Path(f"/proc/{pid}").exists() and _start_ticks(pid) == ticks
        if not alive:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def bind_server(
    host: str, port: int, handler: type[BaseHTTPRequestHandler], tries: int = PORT_TRIES
) -> ThreadingHTTPServer:
    """A server on `port`, or the next free one of `tries` ports; says so when it moved."""
    tries = max(1, min(tries, 65536 - port))
    for offset in range(tries):
        try:
            server = ThreadingHTTPServer((host, port + offset), handler)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE or port == 0:
                raise
            continue
        if offset:
            logger.warning(
                "Metrics port %d on %s is in use (another `dramatiq actors` on this host?); "
                "serving this command's metrics on port %d",
                port,
                host,
                port + offset,
            )
        return server
    raise OSError(
        errno.EADDRINUSE,
        f"metrics ports {port}-{port + tries - 1} on {host} are all in use; "
        "set TASKYARD_METRICS_PORT to a free port",
    )


class HostCollector:
    """Queue depth per queue label, the outbox backlog and the store's tables, cached a while.

    The store's figures are one per Taskyard table (a fixed set of label values):
    rows (PostgreSQL's estimate), bytes of heap and of indexes, the oldest
    record's age and how far past its retention it is, and the job records stuck
    past retention.
    """

    def __init__(
        self,
        *,
        broker_url: str,
        engine: Engine,
        queue_prefix: str,
        list_queues: Callable[[], list[str]],
        every_seconds: float = HOST_METRICS_EVERY_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        retention_days: int = 30,
    ) -> None:
        self.broker_url = broker_url
        self.retention_days = retention_days
        self.store: StoreStats | None = None
        self.engine = engine
        self.queue_prefix = queue_prefix
        self.list_queues = list_queues
        self.every_seconds = every_seconds
        self.clock = clock
        self._lock = threading.Lock()
        self._measured_at: float | None = None
        self.ready: dict[str, int] = {}
        self.outbox: int | None = None
        # Whether the last measure reached each dependency (1) or not (0): "broker" from the
        # queue depth's connection, "database" from the outbox count.
        self.up: dict[str, int] = {}

    def refresh(self) -> None:
        """Measure again if the last measure is older than `every_seconds`."""
        with self._lock:
            now = self.clock()
            if self._measured_at is not None and now - self._measured_at < self.every_seconds:
                return
            self._measured_at = now
            try:
                self.ready = self._ready_by_label()
                self.up["broker"] = 1
            except Exception:
                self.up["broker"] = 0
                logger.warning("Could not measure queue depth in RabbitMQ", exc_info=True)
            try:
                self.outbox = self._outbox_backlog()
                self.up["database"] = 1
            except Exception:
                self.up["database"] = 0
                logger.warning("Could not count the outbox backlog", exc_info=True)
            try:
                with self.engine.begin() as conn:
                    self.store = store_stats(conn, retention_days=self.retention_days)
            except Exception:
                logger.warning("Could not measure the store's tables", exc_info=True)

    def _ready_by_label(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        for queue, found in read_ready(self.broker_url, self.list_queues()).items():
            if found is not None:  # (a queue not declared yet)
                label = queue_label(queue, self.queue_prefix)
                totals[label] = totals.get(label, 0) + found.ready
        return totals

    def _outbox_backlog(self) -> int:
        with self.engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text(f"SET LOCAL statement_timeout = {OUTBOX_COUNT_TIMEOUT_MS}"))
            return int(conn.scalar(select(func.count()).select_from(OutboxMessage)) or 0)

    def collect(self) -> Iterator[Any]:
        """prometheus-client's collector protocol."""
        from prometheus_client.core import GaugeMetricFamily

        self.refresh()
        ready = GaugeMetricFamily(
            "taskyard_queue_messages_ready",
            "Messages ready in RabbitMQ, per queue label (all tenant queues summed as `tenant`).",
            labels=["queue"],
        )
        for label, count in sorted(self.ready.items()):
            ready.add_metric([label], count)
        yield ready
        backlog = GaugeMetricFamily(
            "taskyard_outbox_messages", "Rows waiting in the outbox table to be published."
        )
        if self.outbox is not None:
            backlog.add_metric([], self.outbox)
        yield backlog
        up = GaugeMetricFamily(
            "taskyard_dependency_up",
            "Whether this command's last measure reached the dependency: 1 yes, 0 no "
            "(`broker`: RabbitMQ, `database`: PostgreSQL).",
            labels=["dependency"],
        )
        for dependency, value in sorted(self.up.items()):
            up.add_metric([dependency], value)
        yield up
        yield from self._store_metrics()

    def _store_metrics(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        rows = GaugeMetricFamily(
            "taskyard_table_rows",
            "Rows of each Taskyard table (PostgreSQL's estimate).",
            labels=["table"],
        )
        size = GaugeMetricFamily(
            "taskyard_table_bytes",
            "Bytes of each Taskyard table: its heap (with TOAST) and its indexes.",
            labels=["table", "part"],
        )
        oldest = GaugeMetricFamily(
            "taskyard_table_oldest_record_age_seconds",
            "Age of the oldest record of each dated Taskyard table (jobs: since its send).",
            labels=["table"],
        )
        lag = GaugeMetricFamily(
            "taskyard_retention_lag_seconds",
            "How far past its table's retention the oldest record is, per table with a "
            "retention (jobs, schedule_runs: TASKYARD_JOB_RETENTION_DAYS; workers: a day); "
            "0 when on time. The daily retention job drops a day's job records at its first "
            "run after the whole day expired: up to a day and a few hours is normal.",
            labels=["table"],
        )
        stuck = GaugeMetricFamily(
            "taskyard_jobs_stuck",
            "Job records still queued or retrying, sent longer ago than "
            f"TASKYARD_JOB_RETENTION_DAYS (counted up to {STUCK_CAP:,}).",
        )
        if self.store is not None:
            for table in self.store["tables"]:
                name = table["table"]
                rows.add_metric([name], table["rows"])
                if table["heap_bytes"] is not None:
                    size.add_metric([name, "heap"], table["heap_bytes"])
                if table["index_bytes"] is not None:
                    size.add_metric([name, "indexes"], table["index_bytes"])
                if table["oldest_age_seconds"] is not None:
                    oldest.add_metric([name], table["oldest_age_seconds"])
                if table["retention_lag_seconds"] is not None:
                    lag.add_metric([name], table["retention_lag_seconds"])
            stuck.add_metric([], self.store["stuck_jobs"])
        yield from (rows, size, oldest, lag, stuck)


def make_handler(directory: Path, extra: Iterable[Any]) -> type[BaseHTTPRequestHandler]:
    """A request handler serving the merged samples of `directory` and the `extra` collectors."""
    collectors = list(extra)

    class MetricsHandler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            import prometheus_client as prom
            from prometheus_client import multiprocess

            path = self.path.split("?")[0]
            if path in (LIVE_PATH, READY_PATH):
                status, body = probe_status(directory, path)
                encoded = json.dumps(body, indent=1).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(encoded)))
                self.end_headers()
                self.wfile.write(encoded)
                return
            if path not in ("/metrics", "/"):
                self.send_error(404, "metrics are at /metrics, probes at /healthz and /readyz")
                return
            for flush in list(BEFORE_SCRAPE):
                flush()
            registry = prom.CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
            for collector in collectors:
                registry.register(collector)
            output = prom.generate_latest(registry)
            self.send_response(200)
            self.send_header("Content-Type", prom.CONTENT_TYPE_LATEST)
            self.end_headers()
            self.wfile.write(output)

        def log_message(self, format: str, *args: Any) -> None:
            logger.debug(format, *args)

    return MetricsHandler


def run_exposition_server() -> int:
    """The fork process of a `dramatiq actors` command: serves `/metrics` until stopped."""
    # Imported here: this runs in a fresh process that has not loaded the broker.
    from db.session import make_engine, make_session_factory
    from services.tenants import served_tenant_ids
    from settings import load_settings

    settings = load_settings()
    configure_logging(settings)
    directory = command_dir()
    directory.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings)
    sessions = make_session_factory(engine)

    def list_queues() -> list[str]:
        with sessions() as session:
            tenants = settings.tenants or tuple(served_tenant_ids(session))
        return [settings.system_queue] + [settings.tenant_queue(t) for t in tenants]

    host = HostCollector(
        broker_url=settings.broker_url,
        engine=engine,
        queue_prefix=settings.queue_prefix,
        list_queues=list_queues,
        retention_days=settings.job_retention_days,
    )
    extra = [] if settings.uses_stub_broker else [host]
    try:
        server = bind_server(
            settings.metrics_host, settings.metrics_port, make_handler(directory, extra)
        )
    except OSError as exc:
        logger.error(
            "Metrics not served on %s:%d (%s); check TASKYARD_METRICS_HOST and "
            "TASKYARD_METRICS_PORT. The workers run on without metrics.",
            settings.metrics_host,
            settings.metrics_port,
            exc,
        )
        return 1
    logger.info(
        "Serving metrics on http://%s:%d/metrics", settings.metrics_host, server.server_port
    )
    try:
        server.serve_forever()
    finally:
        server.server_close()
        shutil.rmtree(directory, ignore_errors=True)
    return 0
