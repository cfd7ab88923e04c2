"""Metrics on the in-process broker and SQLite: outcomes agree with job records; bounded labels."""

from __future__ import annotations

import datetime as dt
import json
import logging
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from dramatiq import Worker
from dramatiq.brokers.stub import StubBroker
from prometheus_client import CollectorRegistry
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from actors.base import TaskyardActor, taskyard_actor
from db.models import Job
from middleware import current_session
from middleware.db_session import find_middleware
from middleware.metrics import Metrics, make_instruments
from middleware.metrics_labels import TenantLabels, queue_label
from middleware.metrics_logging import JsonFormatter
from middleware.metrics_server import bind_server, command_dir, remove_stale_dirs
from services.cron import periodic
from services.errors import PermanentError, TransientError
from services.job_control import cancel_job
from services.tenants import create_tenant
from settings import SettingsError, load_settings
from tests.unit.middleware.stub_world import drain, stub_world
from transport.rabbitmq import publish_now


@dataclass
class Harness:
    """A stub broker wired like production, with the metrics in a registry of the test's own."""

    broker: StubBroker
    worker: Worker
    sessions: sessionmaker[Session]
    registry: CollectorRegistry
    metrics: Metrics

    def drain(self) -> None:
        """Run every queued message, retries and delays included, to completion."""
        drain(self.broker, self.worker, rounds=4)

    def value(self, name: str, **labels: str) -> float:
        """A sample's value once the metrics held in memory are written out, 0 when absent."""
        self.metrics.flush()
        return self.registry.get_sample_value(name, labels) or 0.0

    def statuses(self) -> dict[str, int]:
        """How many job records are in each status."""
        with self.sessions() as session:
            rows = session.execute(select(Job.status, func.count()).group_by(Job.status))
            return {status: count for status, count in rows.all()}


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    registry = CollectorRegistry()

    def use_registry(broker: StubBroker) -> None:
        metrics = find_middleware(broker, Metrics)
        assert metrics is not None
        metrics.registry = registry
        metrics.instruments = make_instruments(registry)

    with stub_world(tmp_path, max_attempts=2, prepare=use_registry) as world:
        broker, worker, sessions, _ = world
        metrics = find_middleware(broker, Metrics)
        assert metrics is not None
        yield Harness(
            broker=broker, worker=worker, sessions=sessions, registry=registry, metrics=metrics
        )


def declare(harness: Harness, name: str, fn: Any, **options: Any) -> TaskyardActor:
    actor = taskyard_actor(name=name, broker=harness.broker, **options)(fn)
    harness.broker.declare_queue("tenant.1")
    return actor


def test_every_outcome_is_counted_as_its_job_record_says(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    # Given actors that succeed, fail once then succeed, and fail for good
    calls: dict[str, int] = {}

    def ok(tenant_id: int) -> None:
        create_tenant(current_session(), f"made-{len(calls)}")
        calls["ok"] = calls.get("ok", 0) + 1

    def flaky(tenant_id: int) -> None:
        calls["flaky"] = calls.get("flaky", 0) + 1
        if calls["flaky"] == 1:
            raise TransientError("down for a moment")

    def broken(tenant_id: int) -> None:
        raise PermanentError("never works", reason="bad_input")

    def tick() -> None:
        pass

    ok_actor = declare(harness, "ok", ok)
    tick_actor = declare(harness, "tick", tick, tenant_scoped=False, periodic=periodic("* * * * *"))
    flaky_actor = declare(harness, "flaky", flaky)
    broken_actor = declare(harness, "broken", broken)

    # When they run, a finished message is delivered again, a delayed one is
    # cancelled before it runs, and a periodic message arrives too late
    caplog.set_level(logging.INFO, logger="JobOutcome")
    first = ok_actor.send(tenant_id=1)
    flaky_actor.send(tenant_id=1)
    broken_actor.send(tenant_id=1)
    harness.drain()
    publish_now(harness.broker, first)
    later = ok_actor.send_with_options(kwargs={"tenant_id": 1}, delay=500)
    with harness.sessions.begin() as session:
        assert cancel_job(session, later.message_id) == "cancelled"
    stale = (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)).isoformat()
    tick_actor.send_with_options(scheduled_at=stale)
    harness.drain()

    # Then the counters agree with the job records, outcome by outcome
    statuses = harness.statuses()
    assert statuses == {"succeeded": 2, "dead": 1, "cancelled": 1, "skipped": 1}
    v = harness.value
    assert v("taskyard_jobs_total", actor="ok", queue="tenant", outcome="succeeded") == 1
    assert v("taskyard_jobs_total", actor="flaky", queue="tenant", outcome="retried") == 1
    assert v("taskyard_jobs_total", actor="flaky", queue="tenant", outcome="succeeded") == 1
    assert v("taskyard_jobs_total", actor="broken", queue="tenant", outcome="dead") == 1
    assert v("taskyard_jobs_total", actor="ok", queue="tenant", outcome="duplicate") == 1
    assert v("taskyard_jobs_total", actor="ok", queue="tenant", outcome="cancelled") == 1
    assert v("taskyard_jobs_total", actor="tick", queue="taskyard.system", outcome="skipped") == 1
    assert v("taskyard_tenant_jobs_total", tenant="1", outcome="succeeded") == 2
    assert v("taskyard_dead_letters_total", actor="broken", queue="tenant") == 1
    assert v("taskyard_job_duration_seconds_count", actor="flaky", queue="tenant") == 2
    # Time in queue is the first attempt's wait only.
    assert v("taskyard_job_queue_time_seconds_count", actor="flaky", queue="tenant") == 1
    assert v("taskyard_jobs_in_progress", actor="ok", queue="tenant") == 0
    assert v("taskyard_queue_messages_unacked", queue="tenant") == 0
    assert v("taskyard_db_commit_seconds_count") >= 4
    # And one log line per outcome carries its message id, tenant, actor, duration, outcome
    lines = [r for r in caplog.records if r.name == "JobOutcome"]
    assert len(lines) == 7
    dead_line = next(r for r in lines if getattr(r, "outcome", None) == "dead")
    assert (dead_line.actor, dead_line.tenant_id) == ("broken", 1)  # type: ignore[attr-defined]
    assert dead_line.duration_seconds >= 0  # type: ignore[attr-defined]


def test_json_log_line_is_one_object_with_the_outcome_fields() -> None:
    record = logging.LogRecord("JobOutcome", logging.INFO, __file__, 1, "ok %s", ("m1",), None)
    record.__dict__.update(
        {"message_id": "m1", "tenant_id": 7, "actor": "ok", "duration_seconds": 0.25}
    )
    record.__dict__["outcome"] = "succeeded"
    line = JsonFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["message"] == "ok m1"
    assert {k: entry[k] for k in ("message_id", "tenant_id", "actor", "outcome")} == {
        "message_id": "m1",
        "tenant_id": 7,
        "actor": "ok",
        "outcome": "succeeded",
    }
    assert entry["duration_seconds"] == 0.25 and entry["level"] == "INFO"


def test_tenant_labels_stay_bounded_with_ten_thousand_tenants() -> None:
    labels = TenantLabels(limit=5)
    seen = set()
    # Tenant 42 is by far the busiest, but only shows up after 10,000 others.
    for tenant_id in range(1, 10_001):
        seen.add(labels.count(tenant_id))
    for _ in range(50):
        seen.add(labels.count(42_000))
    for tenant_id in range(10_001, 20_001):
        seen.add(labels.count(tenant_id))
    assert len(seen) <= 2 * 5 + 1
    assert "other" in seen and "42000" in seen
    assert len(labels.labelled()) <= 10
    assert TenantLabels(limit=0).count(3) == "other"
    assert labels.count(None) == "other"


@pytest.mark.parametrize(
    ("queue", "label"),
    [
        ("t1_tenant.7", "tenant"),
        ("t1_tenant.12345.DQ", "tenant"),
        ("t1_taskyard.system", "taskyard.system"),
        ("t1_taskyard.system.XQ", "taskyard.system"),
        ("t1_tenant.x", "tenant.x"),
    ],
)
def test_queue_label_collapses_tenant_queues(queue: str, label: str) -> None:
    assert queue_label(queue, "t1_") == label


class _Nothing(BaseHTTPRequestHandler):
    pass


def test_second_command_takes_the_next_port_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    first = bind_server("127.0.0.1", 0, _Nothing)
    port = first.server_port
    try:
        with caplog.at_level(logging.WARNING, logger="MetricsServer"):
            second = bind_server("127.0.0.1", port, _Nothing, tries=3)
        try:
            assert second.server_port != port
            assert second.server_port in (port + 1, port + 2)
            assert f"Metrics port {port} on 127.0.0.1 is in use" in caplog.text
        finally:
            second.server_close()
    finally:
        first.server_close()


def test_no_free_port_is_one_clear_error() -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        with pytest.raises(OSError, match=f"metrics ports {port}-{port} .* set TASKYARD_METRICS"):
            bind_server("127.0.0.1", port, _Nothing, tries=1)
    finally:
        holder.close()


def test_directories_of_finished_commands_are_removed(tmp_path: Path) -> None:
    mine = command_dir(str(tmp_path))
    mine.mkdir()
    gone = tmp_path / "taskyard-metrics-999999999-1"
    gone.mkdir()
    (gone / "counter_1.db").write_bytes(b"x")
    assert remove_stale_dirs(str(tmp_path)) == [gone]
    assert mine.exists() and not gone.exists()


def test_bad_tenant_label_count_fails_with_the_variable_name() -> None:
    with pytest.raises(SettingsError, match="TASKYARD_METRICS_TENANT_LABELS='many'"):
        load_settings({"TASKYARD_METRICS_TENANT_LABELS": "many"})
    assert load_settings({"TASKYARD_METRICS_TENANT_LABELS": "3"}).metrics_tenant_labels == 3


@pytest.mark.parametrize("port", ["70000", "-1", "http"])
def test_bad_metrics_port_fails_with_the_variable_name(port: str) -> None:
    with pytest.raises(SettingsError, match=f"TASKYARD_METRICS_PORT='{port}' is invalid"):
        load_settings({"TASKYARD_METRICS_PORT": port})
