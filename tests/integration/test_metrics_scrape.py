"""A real worker's /metrics: every metric the dashboard queries is there, and counts match records.

The worker and the producer use a queue prefix of this test's own, so no other
worker of the run takes its messages and the counters see every job.
"""

from __future__ import annotations

import dataclasses
import json
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from db.models import Job
from middleware.metrics_server import DIR_PREFIX
from settings import Settings
from tests.support import REPO, WorkerProcess, delete_prefix_queues, free_port, wait_for, worker_env

pytestmark = pytest.mark.integration

DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "taskyard.json"

# Sends one job of each kind under the test's prefix; prints the message ids as JSON.
PRODUCER = """
import datetime as dt, json, sys
from actors import ingest_resources, scheduler_tick
from brokers import settings
from db.session import make_engine, make_session_factory
from services.job_control import cancel_job

tenant_id, good_url = int(sys.argv[1]), sys.argv[2]
ids = {}
ids["good"] = ingest_resources.send(tenant_id=tenant_id, source_url=good_url).message_id
ids["unreachable"] = ingest_resources.send(
    tenant_id=tenant_id, source_url="http://127.0.0.1:9/feed"
).message_id
later = ingest_resources.send_with_options(
    kwargs={"tenant_id": tenant_id, "source_url": good_url}, delay=3_000
)
with make_session_factory(make_engine(settings)).begin() as session:
    assert cancel_job(session, later.message_id) == "cancelled"
ids["cancelled"] = later.message_id
stale = (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10)).isoformat()
ids["stale_tick"] = scheduler_tick.send_with_options(scheduled_at=stale).message_id
print(json.dumps(ids))
"""


def free_port_pair() -> tuple[socket.socket, int]:
    """A listening socket holding port P, with P + 1 free: the worker must move to P + 1.

    Below the ephemeral range (`free_port`): P + 1 is not some client's meanwhile.
    """
    for _ in range(50):
        port = free_port()
        holder = socket.socket()
        try:
            holder.bind(("127.0.0.1", port))
        except OSError:
            holder.close()
            continue
        probe = socket.socket()
        try:
            probe.bind(("127.0.0.1", port + 1))
        except OSError:
            holder.close()
            continue
        finally:
            probe.close()
        holder.listen()
        return holder, port
    pytest.fail("no pair of free ports")


def scrape(port: int) -> dict[str, float]:
    """The worker's /metrics as {series with labels: value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        body = response.read().decode()
    samples = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            series, value = line.rsplit(" ", 1)
            samples[series] = float(value)
    return samples


def serving(port: int) -> bool:
    """Whether the metrics server answers on `port` yet."""
    try:
        return bool(scrape(port))
    except OSError:
        return False


def total(samples: dict[str, float], name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels`."""
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(
        value
        for series, value in samples.items()
        if series.split("{")[0] == name and all(w in series for w in wanted)
    )


def records(sessions: sessionmaker[Session], prefix: str) -> dict[str, int]:
    """Job records of this test's queues by status, and the failed attempts retried."""
    with sessions() as session:
        mine = Job.queue.startswith(prefix)
        rows = session.execute(select(Job.status, func.count()).where(mine).group_by(Job.status))
        counts = {status: count for status, count in rows.all()}
        retried = session.scalar(
            select(func.coalesce(func.sum(Job.attempts - 1), 0)).where(
                mine, Job.status.in_(("succeeded", "dead"))
            )
        )
    counts["retried"] = int(retried or 0)
    return counts


def test_scraped_metrics_cover_the_dashboard_and_match_the_job_records(
    start_worker: Callable[..., WorkerProcess],
    make_tenant: Callable[[str], int],
    sessions: sessionmaker[Session],
    httpserver: HTTPServer,
    settings: Settings,
) -> None:
    # Given a worker of its own queue prefix, whose metrics port is already taken
    # (as by another `dramatiq actors` on the same host)
    prefix = f"{settings.queue_prefix}m{int(time.time() * 1000) % 10**9}_"
    holder, port = free_port_pair()
    tenant_id = make_tenant("metrics")
    feed = [{"id": f"r{i}", "name": f"R {i}", "creation_date": "2024-01-02"} for i in range(2)]
    httpserver.expect_request("/feed.json").respond_with_json(feed)
    env = {
        "TASKYARD_QUEUE_PREFIX": prefix,
        "TASKYARD_METRICS_PORT": str(port),
        "TASKYARD_LOG_FORMAT": "json",
    }
    try:
        worker = start_worker(**env)
        # Then it says so and takes the next port
        wait_for(lambda: f"Metrics port {port} on 127.0.0.1 is in use" in worker.log(), 20)
        metrics_port = port + 1
        wait_for(lambda: serving(metrics_port), 20, "the metrics server")
        directories = list(Path(tempfile.gettempdir()).glob(f"{DIR_PREFIX}{worker.proc.pid}-*"))
        assert len(directories) == 1

        # When jobs of every outcome run (succeeded, retried, dead, cancelled, skipped)
        sent = subprocess.run(
            [sys.executable, "-c", PRODUCER, str(tenant_id), httpserver.url_for("/feed.json")],
            cwd=REPO,
            env=worker_env(**env),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert sent.returncode == 0, sent.stderr
        expected = {"succeeded": 3, "dead": 1, "cancelled": 1, "skipped": 1, "retried": 2}
        deadline = time.monotonic() + 60
        while records(sessions, prefix) != expected and time.monotonic() < deadline:
            time.sleep(0.2)
        assert records(sessions, prefix) == expected, worker.log()[-3000:]

        # Then the counters equal the job records, outcome by outcome
        seen: dict[str, float] = {}

        def agree() -> bool:
            samples = scrape(metrics_port)
            seen.clear()
            seen.update(
                {
                    series: value
                    for series, value in samples.items()
                    if series.startswith(("taskyard_jobs_total", "taskyard_jobs_in_progress"))
                }
            )
            counted = {
                outcome: total(samples, "taskyard_jobs_total", outcome=outcome)
                for outcome in expected
            }
            # A duplicate delivery (at least once) may still be running; it is no outcome here.
            return counted == expected and total(samples, "taskyard_jobs_in_progress") == 0

        deadline = time.monotonic() + 30
        while not agree() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert agree(), f"records {records(sessions, prefix)}, scraped {seen}"
        samples = scrape(metrics_port)
        assert total(samples, "taskyard_tenant_jobs_total", tenant=str(tenant_id)) == 3 + 1 + 2 + 1
        assert total(samples, "taskyard_dead_letters_total", actor="ingest_resources") == 1
        progress = {k: v for k, v in samples.items() if "in_progress" in k or "unacked" in k}
        assert total(samples, "taskyard_jobs_in_progress") == 0, progress
        assert total(samples, "taskyard_job_queue_time_seconds_count") >= 4
        assert total(samples, "taskyard_queue_messages_unacked") == 0
        assert time.time() - total(samples, "taskyard_worker_heartbeat_timestamp_seconds") < 30
        assert total(samples, "taskyard_scheduler_lag_seconds") >= 9 * 60
        assert 'taskyard_queue_messages_ready{queue="tenant"}' in samples

        # And every metric the dashboard queries is in the scrape
        dashboard = json.loads(DASHBOARD.read_text())
        queried = {
            name
            for panel in dashboard["panels"]
            for target in panel["targets"]
            for name in re.findall(r"\btaskyard_[a-z_]+", target["expr"])
        }
        scraped = {series.split("{")[0] for series in samples}
        assert queried - scraped == set()

        # And one JSON log line per outcome names the job
        lines = [json.loads(x) for x in worker.log().splitlines() if x.startswith("{")]
        outcomes = [x for x in lines if x.get("logger") == "JobOutcome"]
        dead = [x for x in outcomes if x["outcome"] == "dead"]
        assert len(dead) == 1 and dead[0]["tenant_id"] == tenant_id
        assert dead[0]["actor"] == "ingest_resources" and dead[0]["duration_seconds"] >= 0
        assert len(outcomes) == sum(expected.values())
    finally:
        holder.close()
    # And when the worker stops, its metrics directory goes with it
    worker.stop()
    wait_for(lambda: not any(d.exists() for d in directories), 10, "the directory removed")
    delete_prefix_queues(dataclasses.replace(settings, queue_prefix=prefix), sessions.kw["bind"])


SEND_GOOD = """
import sys
from actors import ingest_resources

tenant_id, url, count = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
for _ in range(count):
    ingest_resources.send(tenant_id=tenant_id, source_url=url)
"""


def test_two_commands_on_one_host_share_the_work_and_their_scrapes_add_up(
    make_tenant: Callable[[str], int],
    sessions: sessionmaker[Session],
    httpserver: HTTPServer,
    settings: Settings,
    tmp_path: Path,
    migrated_database: str,
) -> None:
    # Given two `dramatiq actors` commands on one host with the same metrics port,
    # the first with two worker processes
    prefix = f"{settings.queue_prefix}n{int(time.time() * 1000) % 10**9}_"
    # Below the ephemeral range: the next ports are not some client's meanwhile.
    port = free_port()
    env = worker_env(TASKYARD_QUEUE_PREFIX=prefix, TASKYARD_METRICS_PORT=str(port))
    first = WorkerProcess(tmp_path / "first.log", env, threads=2, options=("--processes", "2"))
    second: WorkerProcess | None = None
    try:
        first.wait_ready()
        wait_for(lambda: first.log().count("Worker process is ready for action.") == 2, 30)
        wait_for(lambda: serving(port), 20, "the first command's metrics")
        second = WorkerProcess(tmp_path / "second.log", env, threads=2)
        second.wait_ready()
        # Then the second says the port is taken and serves on the next free one (the
        # next port, unless something else of the host holds it)
        taken = f"Metrics port {port} on 127.0.0.1 is in use"
        wait_for(lambda: taken in second.log(), 20)
        found = re.search(rf"{taken} .*serving this command's metrics on port (\d+)", second.log())
        assert found is not None, second.log()[-2000:]
        other = int(found.group(1))
        assert other > port
        wait_for(lambda: serving(other), 20, "the second command's metrics")
        first_dir = next(Path(tempfile.gettempdir()).glob(f"{DIR_PREFIX}{first.proc.pid}-*"))
        pids = {f.stem.rsplit("_", 1)[1] for f in first_dir.glob("gauge_livemin_*.db")}
        assert len(pids) == 2, pids

        # When 6 feeds of 2 items are ingested (18 jobs), whoever takes them
        tenant_id = make_tenant("two-commands")
        feed = [{"id": f"r{i}", "name": f"R {i}", "creation_date": "2024-01-02"} for i in range(2)]
        httpserver.expect_request("/feed.json").respond_with_json(feed)
        sent = subprocess.run(
            [
                sys.executable,
                "-c",
                SEND_GOOD,
                str(tenant_id),
                httpserver.url_for("/feed.json"),
                "6",
            ],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert sent.returncode == 0, sent.stderr
        wait_for(lambda: records(sessions, prefix).get("succeeded") == 18, 60, "18 jobs")

        # Then the two scrapes add up to the records
        def both() -> float:
            return sum(
                total(scrape(p), "taskyard_jobs_total", outcome="succeeded") for p in (port, other)
            )

        wait_for(lambda: both() == 18, 20, "18 succeeded across both scrapes")
    finally:
        if second is not None:
            second.stop()
        first.stop()
    # And each command's directory is gone once it stopped
    wait_for(lambda: not first_dir.exists(), 10, "the first command's directory removed")
    delete_prefix_queues(dataclasses.replace(settings, queue_prefix=prefix), sessions.kw["bind"])


def test_a_bad_metrics_host_is_one_error_and_the_worker_runs_on(
    start_worker: Callable[..., WorkerProcess],
) -> None:
    # Given a metrics host that does not resolve
    worker = start_worker(TASKYARD_METRICS_HOST="no-such-host.invalid")

    # Then the metrics server says so once, naming the setting, and the worker stays up
    wait_for(lambda: "Metrics not served on no-such-host.invalid" in worker.log(), 20)
    assert "check TASKYARD_METRICS_HOST" in worker.log()
    time.sleep(2)
    assert worker.proc.poll() is None
    assert worker.stop() == 0
