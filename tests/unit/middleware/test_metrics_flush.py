"""A job's metrics held in memory: written out by a flush, the thread, shutdown and a scrape."""

from __future__ import annotations

import logging
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import dramatiq
import pytest
from dramatiq import Message, Worker
from dramatiq.broker import MessageProxy
from dramatiq.brokers.stub import StubBroker
from prometheus_client import CollectorRegistry, Histogram
from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

import middleware.metrics
from middleware.metrics import DURATION_BUCKETS, QUEUE_BUCKETS, SUCCEEDED, Metrics
from middleware.metrics_server import BEFORE_SCRAPE, bind_server, make_handler


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def broker() -> Iterator[StubBroker]:
    stub = StubBroker()
    dramatiq.actor(lambda tenant_id: None, actor_name="job", queue_name="p.tenant.7", broker=stub)
    yield stub
    stub.close()


def make_metrics(tmp_path: Path, **options: float) -> tuple[Metrics, CollectorRegistry, Clock]:
    engine = create_engine(f"sqlite:///{tmp_path / 'metrics.sqlite3'}")
    clock = Clock()
    registry = CollectorRegistry()
    metrics = Metrics(
        session_factory=sessionmaker(engine), queue_prefix="p.", registry=registry, clock=clock,
        **options,
    )  # fmt: skip
    metrics.after_process_boot(StubBroker())
    return metrics, registry, clock


def message(broker: StubBroker, tenant_id: int = 7, sent_at: float = 1_000_000.0) -> MessageProxy:
    return MessageProxy(
        Message(
            queue_name="p.tenant.7",
            actor_name="job",
            args=(),
            kwargs={"tenant_id": tenant_id},
            options={},
            message_timestamp=int(sent_at * 1000),
        )
    )


def run(metrics: Metrics, broker: StubBroker, clock: Clock, seconds: float) -> None:
    """One job that takes exactly `seconds` (from 0), through the hooks a worker calls."""
    clock.now = 0.0
    proxy = message(broker, sent_at=clock.now)
    metrics.before_process_message(broker, proxy)
    clock.now += seconds
    metrics.after_process_message(broker, proxy, result=None)


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


AQ = {"actor": "job", "queue": "tenant"}


def test_a_jobs_metrics_appear_after_a_flush_exactly_as_if_observed_at_once(
    tmp_path: Path, broker: StubBroker
) -> None:
    # Given jobs of durations on, between and beyond the buckets' bounds
    metrics, registry, clock = make_metrics(tmp_path)
    durations = [0.0, 0.005, 0.0051, 0.3, 1.0, 899.0, 900.0, 5000.0, 0.3]

    # When they run, their metrics are held in memory
    for seconds in durations:
        run(metrics, broker, clock, seconds)
    assert value(registry, "taskyard_jobs_total", **AQ, outcome="succeeded") is None
    assert value(registry, "taskyard_job_duration_seconds_count", **AQ) is None

    # Then a flush writes them, the histogram's buckets and sum as `observe` would
    metrics.flush()
    assert value(registry, "taskyard_jobs_total", **AQ, outcome="succeeded") == len(durations)
    assert value(registry, "taskyard_tenant_jobs_total", tenant="7", outcome="succeeded") == 9
    # Started and finished between two flushes: 0, but in the scrape.
    assert value(registry, "taskyard_jobs_in_progress", **AQ) == 0
    assert value(registry, "taskyard_queue_messages_unacked", queue="tenant") == 0
    reference = CollectorRegistry()
    direct = Histogram("d", "", buckets=DURATION_BUCKETS, registry=reference)
    for seconds in durations:
        direct.observe(seconds)
    for bound in [*DURATION_BUCKETS, float("inf")]:
        le = "+Inf" if bound == float("inf") else str(bound)
        expected = reference.get_sample_value("d_bucket", {"le": le})
        assert value(registry, "taskyard_job_duration_seconds_bucket", **AQ, le=le) == expected
    assert value(registry, "taskyard_job_duration_seconds_sum", **AQ) == pytest.approx(
        sum(durations)
    )
    assert value(registry, "taskyard_job_queue_time_seconds_count", **AQ) == len(durations)
    queue_buckets = [
        s
        for m in registry.collect()
        for s in m.samples
        if s.name.endswith("queue_time_seconds_bucket")
    ]
    assert len(queue_buckets) == len(QUEUE_BUCKETS) + 1
    # And a second flush adds nothing more
    metrics.flush()
    assert value(registry, "taskyard_jobs_total", **AQ, outcome="succeeded") == len(durations)


def test_a_running_job_is_in_progress_and_unacked_after_the_next_flush(
    tmp_path: Path, broker: StubBroker
) -> None:
    metrics, registry, _ = make_metrics(tmp_path)
    proxy = message(broker)
    metrics.before_process_message(broker, proxy)
    metrics.flush()
    assert value(registry, "taskyard_jobs_in_progress", **AQ) == 1
    assert value(registry, "taskyard_queue_messages_unacked", queue="tenant") == 1
    metrics.after_process_message(broker, proxy, result=None)
    metrics.flush()
    assert value(registry, "taskyard_jobs_in_progress", **AQ) == 0
    assert value(registry, "taskyard_queue_messages_unacked", queue="tenant") == 0


def test_the_metrics_thread_writes_out_by_itself_and_shutdown_writes_the_rest(
    tmp_path: Path, broker: StubBroker
) -> None:
    # Given a booted worker whose metrics thread writes out every 50 ms
    metrics, registry, clock = make_metrics(tmp_path, flush_every=0.05)
    worker = Worker(broker, worker_threads=1)
    metrics.after_worker_boot(broker, worker)
    assert metrics.flush in BEFORE_SCRAPE

    # When a job runs, its count appears without anyone flushing
    run(metrics, broker, clock, 0.1)
    deadline = time.monotonic() + 5
    while value(registry, "taskyard_jobs_total", **AQ, outcome="succeeded") is None:
        assert time.monotonic() < deadline, "the metrics thread never wrote the job out"
        time.sleep(0.01)

    # And when the worker shuts down, a job finishing after the thread stopped is written too
    metrics.before_worker_shutdown(broker, worker)
    assert metrics._thread is not None
    metrics._thread.join(5)
    assert not metrics._thread.is_alive()
    run(metrics, broker, clock, 0.1)
    metrics.after_worker_shutdown(broker, worker)
    assert value(registry, "taskyard_jobs_total", **AQ, outcome="succeeded") == 2
    assert metrics.flush not in BEFORE_SCRAPE


def test_nothing_is_lost_with_many_threads_and_the_thread_flushing_meanwhile(
    tmp_path: Path, broker: StubBroker
) -> None:
    # Given a metrics thread writing out as often as it can
    metrics, registry, _ = make_metrics(tmp_path, flush_every=0.0005)
    worker = Worker(broker, worker_threads=1)
    metrics.after_worker_boot(broker, worker)
    threads, jobs = 8, 3_000
    messages = [[message(broker, tenant_id=t) for _ in range(jobs)] for t in range(threads)]

    # When 8 threads run 3,000 jobs each
    def work(mine: list[MessageProxy]) -> None:
        for proxy in mine:
            metrics.before_process_message(broker, proxy)
            metrics.after_process_message(broker, proxy, result=None)

    running = [threading.Thread(target=work, args=(m,)) for m in messages]
    for thread in running:
        thread.start()
    for thread in running:
        thread.join()
    metrics.before_worker_shutdown(broker, worker)
    metrics.after_worker_shutdown(broker, worker)

    # Then every job is counted once, and none is left in progress
    total = threads * jobs
    assert value(registry, "taskyard_jobs_total", **AQ, outcome="succeeded") == total
    assert value(registry, "taskyard_job_duration_seconds_count", **AQ) == total
    assert value(registry, "taskyard_job_queue_time_seconds_count", **AQ) == total
    for tenant in range(threads):
        assert (
            value(registry, "taskyard_tenant_jobs_total", tenant=str(tenant), outcome="ok") is None
        )
        assert (
            value(registry, "taskyard_tenant_jobs_total", tenant=str(tenant), outcome=SUCCEEDED)
            == jobs
        )
    assert value(registry, "taskyard_jobs_in_progress", **AQ) == 0
    assert value(registry, "taskyard_queue_messages_unacked", queue="tenant") == 0


def test_a_scrape_in_the_workers_process_sees_the_last_job(
    tmp_path: Path, broker: StubBroker
) -> None:
    # Given a worker whose thread would not write out for a minute, served in its own process
    metrics, registry, clock = make_metrics(tmp_path, flush_every=60)
    worker = Worker(broker, worker_threads=1)
    metrics.after_worker_boot(broker, worker)
    server = bind_server("127.0.0.1", 0, make_handler(tmp_path, [registry]))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        # When a job finishes just before a scrape
        run(metrics, broker, clock, 0.1)
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            body = response.read().decode()
        # Then the scrape counts it
        assert 'taskyard_jobs_total{actor="job",outcome="succeeded",queue="tenant"} 1.0' in body
    finally:
        server.shutdown()
        server.server_close()
        metrics.before_worker_shutdown(broker, worker)
        metrics.after_worker_shutdown(broker, worker)


def test_the_outcome_line_names_its_place_as_logger_info_would_and_only_when_enabled(
    tmp_path: Path, broker: StubBroker
) -> None:
    metrics, registry, clock = make_metrics(tmp_path)
    records: list[logging.LogRecord] = []
    collect = logging.Handler()  # level NOTSET: it takes whatever the logger lets through
    collect.emit = records.append  # type: ignore[method-assign]
    outcome_logger = logging.getLogger("JobOutcome")
    outcome_logger.addHandler(collect)
    level = outcome_logger.level
    try:
        outcome_logger.setLevel(logging.INFO)
        run(metrics, broker, clock, 0.25)
        (record,) = records
        assert record.getMessage() == f"job {record.message_id} succeeded in 0.250s (tenant 7)"  # type: ignore[attr-defined]
        assert (record.pathname, record.funcName) == (middleware.metrics.__file__, "_finish")
        assert (record.levelno, record.outcome, record.tenant_id) == (logging.INFO, "succeeded", 7)  # type: ignore[attr-defined]
        assert record.duration_seconds == 0.25  # type: ignore[attr-defined]
        # And with the logger off, there is no line, but the job is still counted
        outcome_logger.setLevel(logging.WARNING)
        run(metrics, broker, clock, 0.25)
        assert len(records) == 1
        metrics.flush()
        assert value(registry, "taskyard_jobs_total", **AQ, outcome="succeeded") == 2
    finally:
        outcome_logger.removeHandler(collect)
        outcome_logger.setLevel(level)
