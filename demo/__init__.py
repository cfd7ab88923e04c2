"""`taskyard demo`: the production actors and middleware in one process, with nothing installed.

SQLite stands in for PostgreSQL and Dramatiq's in-process broker for RabbitMQ;
everything else — tenant routing, the DB session and job records, the retry
policy, the outbox, the scheduler's claims — is the code `dramatiq actors`
runs.  The demo serves a bundled sample feed on 127.0.0.1, ingests it (the
feed answers 503 once, so the ingest is retried), runs a scheduler tick that
sends a due schedule's job, sends one ingest of a feed that does not exist
(dead, with its reason), posts signed webhooks to a local receiver that
verifies them, and prints the job records.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

SAMPLE_FEED = Path(__file__).with_name("sample_feed.json")
# The demo gives up on its jobs after this long; it normally finishes in a few seconds.
DEADLINE_SECONDS = 25.0


def missed_slot_cron(now: dt.datetime) -> str:
    """An hourly cron whose slots fall half an hour away from `now`.

    Its latest slot is then always missed, never merely late (a slot within the
    scheduler's grace of a few minutes runs as well), so the demo's tick catches
    up exactly one slot whatever the time of day.
    """
    return f"{(now.minute + 30) % 60} * * * *"


@dataclass
class FeedServer:
    """The sample feed on 127.0.0.1: `/feed.json` answers 503 the first time, then the feed."""

    failures_left: int = 1
    requests: list[str] = field(default_factory=list)
    # Webhook deliveries received on POST /webhook: (signature header, body).
    deliveries: list[tuple[str, bytes]] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    def start(self) -> str:
        """Serve in a daemon thread; returns the base URL."""
        body = SAMPLE_FEED.read_bytes()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.requests.append(self.path)
                if self.path == "/feed.json" and owner.failures_left > 0:
                    owner.failures_left -= 1
                    self._answer(503, b'{"error": "busy, try again"}', {"Retry-After": "1"})
                elif self.path == "/feed.json":
                    self._answer(200, body, {})
                else:
                    self._answer(404, b'{"error": "no such feed"}', {})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                if self.path == "/webhook":
                    owner.deliveries.append((self.headers.get("Taskyard-Signature", ""), body))
                    self._answer(204, b"", {})
                else:
                    self._answer(404, b"", {})

            def _answer(self, status: int, payload: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: the demo prints its own progress."""

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        """Stop serving."""
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


def demo_environment(workdir: Path) -> dict[str, str]:
    """The settings the demo runs with: SQLite in `workdir`, the in-process broker, fast retries."""
    from cryptography.fernet import Fernet

    return {
        # A key made for this run only: the demo's locker holds the webhook signing key.
        "TASKYARD_SECRET_KEYS": Fernet.generate_key().decode(),
        "BROKER_URL": "stub://",
        "DATABASE_URL": f"sqlite:///{workdir / 'taskyard-demo.db'}",
        "TASKYARD_QUEUE_PREFIX": "demo.",
        # The sample feed is served on 127.0.0.1, which the outbound guard refuses by default.
        "TASKYARD_HTTP_ALLOW_PRIVATE": "true",
        "TASKYARD_MIN_BACKOFF_MS": "200",
        "TASKYARD_MAX_BACKOFF_MS": "1000",
        "TASKYARD_TENANT_REFRESH_SECONDS": "1",
    }


@contextmanager
def _quiet_logs(path: Path) -> Iterator[None]:
    """Send the workers' logs to `path`: a dead job's traceback is expected here, not news."""
    root = logging.getLogger()
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    saved_handlers, saved_level = root.handlers[:], root.level
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        handler.close()


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@dataclass
class DemoResult:
    """What the demo did: its job records, the ingest it ran, and how long it took."""

    jobs: list[dict[str, Any]]
    ingest: dict[str, Any]
    # Webhook deliveries the local receiver got, and how many had a valid signature.
    webhooks: list[dict[str, Any]]
    # Job outcomes as the demo's own /metrics reported them at the end.
    metrics: dict[str, float]
    seconds: float
    finished: bool
    log_file: Path


def run_demo(
    workdir: Path | None = None, *, progress: Callable[[str], None] = lambda _: None
) -> DemoResult:
    """Run the whole demo and return its job records; `progress` hears each step."""
    started = time.monotonic()
    # Kept after the demo: its database and log are there to look at.
    work = workdir or Path(tempfile.mkdtemp(prefix="taskyard-demo-"))
    feed = FeedServer()
    base_url = feed.start()
    log_file = work / "taskyard-demo.log"
    try:
        with _environment(demo_environment(work)), _quiet_logs(log_file):
            return _run(base_url, feed, progress, started, log_file)
    finally:
        feed.stop()


def _run(
    base_url: str,
    feed: FeedServer,
    progress: Callable[[str], None],
    started: float,
    log_file: Path,
) -> DemoResult:
    # Imported here: the broker is built from the environment set above.
    import dramatiq
    from dramatiq import Worker

    from db.migrate import upgrade_to_head
    from settings import load_settings

    settings = load_settings()
    progress("Creating the database (SQLite) and its tables")
    upgrade_to_head(settings.database_url)

    import actors
    import brokers
    from actors.schedules import schedulable_actors
    from actors.transaction import taskyard_transaction
    from services.schedules import create_schedule
    from services.tenants import create_tenant
    from services.webhooks import set_webhook

    broker = brokers.broker
    # What `dramatiq actors` does in each worker process; the metrics start here.
    broker.emit_after("process_boot")
    metrics = _serve_metrics(settings)
    if metrics is not None:
        progress(f"Serving metrics on http://{settings.metrics_host}:{metrics.server_port}/metrics")
    worker = Worker(broker, worker_threads=4, worker_timeout=100)
    worker.start()
    try:
        progress("Creating the tenant 'demo' and a schedule that is due")
        now = dt.datetime.now(dt.UTC)
        with taskyard_transaction(broker) as session:
            tenant = create_tenant(session, "demo")
            tenant_id = tenant.id
            create_schedule(
                session,
                tenant_id,
                actor="ingest_resources",
                args={"source_url": f"{base_url}/feed.json"},
                cron=missed_slot_cron(now),
                actors=schedulable_actors(broker),
                # Created "two hours ago", so the tick finds missed slots to catch up on.
                now=now - dt.timedelta(hours=2),
            )
            signing_key = set_webhook(
                session,
                tenant_id,
                f"{base_url}/webhook",
                secret_keys=settings.secret_keys,
                allow_private=True,
            )
        _wait_until_served(broker, tenant_id)
        progress("Ingesting the sample feed (it answers 503 once: watch the retry)")
        ingest_message = actors.ingest_resources.send(
            tenant_id=tenant_id, source_url=f"{base_url}/feed.json"
        )
        progress("Ingesting a feed that does not exist (404: dead, with its reason)")
        actors.ingest_resources.send(tenant_id=tenant_id, source_url=f"{base_url}/missing.json")
        progress("Running a scheduler tick: it claims the schedule's missed slot and sends it")
        actors.scheduler_tick.send()
        finished = _wait_for_final_records(settings, deadline=started + DEADLINE_SECONDS)
        # The last ingests' notifications may still be on their way.
        _wait_for_deliveries(feed, count=3, deadline=started + DEADLINE_SECONDS)
        progress("Every job has finished" if finished else "Stopped waiting: the deadline passed")
        scraped = _scrape(metrics)
    finally:
        worker.stop()
        broker.close()
        dramatiq.set_broker(broker)
        _stop_metrics(metrics)
    return DemoResult(
        jobs=_job_rows(settings),
        ingest=_ingest_of(settings, ingest_message.message_id),
        webhooks=_verified(feed, signing_key),
        metrics=scraped,
        seconds=time.monotonic() - started,
        finished=finished,
        log_file=log_file,
    )


def _serve_metrics(settings: Any) -> ThreadingHTTPServer | None:
    """Serve this process's metrics on the metrics port, or say why not and go on."""
    from middleware.metrics_server import bind_server, command_dir, make_handler

    try:
        server = bind_server(
            settings.metrics_host, settings.metrics_port, make_handler(command_dir(), [])
        )
    except OSError as exc:
        logging.getLogger("demo").warning("Metrics not served: %s", exc)
        return None
    threading.Thread(target=server.serve_forever, name="demo-metrics", daemon=True).start()
    return server


def _scrape(server: ThreadingHTTPServer | None) -> dict[str, float]:
    """`taskyard_jobs_total` by outcome, read from the demo's own /metrics endpoint."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    if server is None:
        return {}
    host, port = server.server_address[:2]
    with urllib.request.urlopen(f"http://{host!s}:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "taskyard_jobs_total":
                outcome = sample.labels["outcome"]
                totals[outcome] = totals.get(outcome, 0.0) + sample.value
    return totals


def _stop_metrics(server: ThreadingHTTPServer | None) -> None:
    import shutil

    from middleware.metrics_server import command_dir

    if server is not None:
        server.shutdown()
        server.server_close()
    shutil.rmtree(command_dir(), ignore_errors=True)
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)


def _wait_for_deliveries(feed: FeedServer, *, count: int, deadline: float) -> None:
    while len(feed.deliveries) < count and time.monotonic() < deadline:
        time.sleep(0.1)


def _verified(feed: FeedServer, signing_key: Any) -> list[dict[str, Any]]:
    """Each delivery as the receiver saw it, its signature checked as a receiver would."""
    import json

    from services.webhooks import InvalidSignature, verify_signature

    seen = []
    for header, body in feed.deliveries:
        try:
            verify_signature(signing_key, header, body, now=dt.datetime.now(dt.UTC))
            valid = True
        except InvalidSignature:
            valid = False
        seen.append({"event": json.loads(body).get("event"), "signature_valid": valid})
    return seen


def _wait_until_served(broker: Any, tenant_id: int) -> None:
    """Wait (at most a few seconds) for the worker to consume the new tenant's queue."""
    from middleware.runtime import runtime_of

    runtime = runtime_of(broker)
    if runtime is None:
        return
    queue = runtime.routing.queue_for(tenant_id)
    deadline = time.monotonic() + 5
    while queue not in broker.get_declared_queues() and time.monotonic() < deadline:
        time.sleep(0.05)


def _sessions(settings: Any) -> Any:
    from db.session import make_engine, make_session_factory

    return make_session_factory(make_engine(settings))


def _wait_for_final_records(settings: Any, *, deadline: float) -> bool:
    from sqlalchemy import func, select

    from db.models import JOB_FINAL_STATES, Job

    factory = _sessions(settings)
    while time.monotonic() < deadline:
        time.sleep(0.2)
        with factory() as session:
            total = session.scalar(select(func.count()).select_from(Job)) or 0
            open_jobs = session.scalar(
                select(func.count()).select_from(Job).where(Job.status.not_in(JOB_FINAL_STATES))
            )
        # The feed's items, the 404 ingest, the scheduled ingest and the tick itself.
        if total > 4 and open_jobs == 0:
            return True
    return False


def _job_rows(settings: Any) -> list[dict[str, Any]]:
    from sqlalchemy import select

    from db.models import Job
    from services.job_views import job_info

    with _sessions(settings)() as session:
        jobs = session.scalars(select(Job).order_by(Job.enqueued_at, Job.message_id)).all()
        return [dict(job_info(job)) for job in jobs]


def _ingest_of(settings: Any, message_id: str) -> dict[str, Any]:
    from sqlalchemy import select

    from db.models import Ingest
    from services.ingest import get_ingest

    with _sessions(settings)() as session:
        ingest_id = session.scalar(
            select(Ingest.id).where(Ingest.message_id == message_id).order_by(Ingest.id.desc())
        )
        return dict(get_ingest(session, ingest_id)) if ingest_id else {}
