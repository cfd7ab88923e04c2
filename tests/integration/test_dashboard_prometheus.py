"""The Grafana dashboard's PromQL, evaluated by a real Prometheus scraping a real worker.

A private `prometheus` process (its own data directory and port) scrapes a
worker of this test's own queue prefix every second while jobs of every
outcome run; then every `expr` of the dashboard goes through its HTTP API. A
query the engine refuses, or a panel without data after the jobs ran, fails.
Without the `prometheus` binary the test is skipped, except under CI, where it
fails (`.ci/run` installs Debian's package).
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pytest_httpserver import HTTPServer
from sqlalchemy.orm import Session, sessionmaker

from settings import Settings
from tests.integration.test_metrics_scrape import PRODUCER, records, serving
from tests.support import (
    IN_CI,
    REPO,
    WorkerProcess,
    delete_prefix_queues,
    free_port,
    wait_for,
    worker_env,
)

pytestmark = pytest.mark.integration

DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "taskyard.json"

# Grafana's variables, as Grafana would fill them in. The window covers the whole
# run (a minute or so), so that an instant query at the end still sees the jobs.
VARIABLES = {"$__rate_interval": "5m", "$__interval": "15s", "$__range": "5m"}

# What each panel must show once two rounds of jobs ran: (at least one series, check of each value).
Check = Callable[[float], bool]


def finite(value: float) -> bool:
    """A real, non-negative number (a quantile without observations is NaN)."""
    return math.isfinite(value) and value >= 0


def positive(value: float) -> bool:
    """A rate or count that moved."""
    return math.isfinite(value) and value > 0


PANELS: dict[str, Check] = {
    "Throughput by outcome": positive,
    "Errors: dead jobs by actor": positive,
    "Retries by actor": positive,
    "Dead letters (last hour)": positive,
    "Time in queue p50 / p95 / p99": finite,
    "Job duration p50 / p95 / p99": finite,
    "Job duration p95 by actor": lambda v: math.isnan(v) or v >= 0,
    "Jobs in progress": finite,
    "Queue depth: ready": finite,
    "Queue depth: unacknowledged": finite,
    "Top tenants by throughput": positive,
    "Scheduler lag": lambda v: v >= 9 * 60,
    "Outbox backlog": finite,
    "Dependencies reached": lambda v: v == 1,
    "Database commit p95": finite,
    "Worker heartbeat age": lambda v: 0 <= v < 30,
    # Read by the metrics server from PostgreSQL's catalogue (services/store.py).
    "Store: table size": positive,
    "Store: rows by table": lambda v: v >= 0,
    "Store: oldest record age": lambda v: v >= 0,
    "Store: stuck job records": lambda v: v >= 0,
    "Store: retention lag": lambda v: v >= 0,
}


def prometheus_binary() -> str:
    """The `prometheus` on PATH; skipped without one, failed under CI."""
    binary = shutil.which("prometheus")
    if binary is None:
        reason = (
            "the `prometheus` binary is not on PATH: install it "
            "(apt-get install --no-install-recommends prometheus) to check the dashboard's queries"
        )
        if IN_CI:
            pytest.fail(f"CI is set and {reason}")
        pytest.skip(reason)
    return binary


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[[int], str]]:
    """Start a private Prometheus scraping 127.0.0.1:<port> every second; returns its URL."""
    binary = prometheus_binary()
    started: list[subprocess.Popen[bytes]] = []

    def start(metrics_port: int) -> str:
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
            "scrape_configs:\n  - job_name: taskyard-worker\n"
            f"    static_configs:\n      - targets: ['127.0.0.1:{metrics_port}']\n"
        )
        port = free_port()
        with (tmp_path / "prometheus.log").open("wb") as log:  # the child keeps its own copy
            started.append(
                subprocess.Popen(
                    [
                        binary,
                        f"--config.file={config}",
                        f"--storage.tsdb.path={tmp_path / 'data'}",
                        f"--web.listen-address=127.0.0.1:{port}",
                    ],
                    cwd=tmp_path,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: ready(url, started[-1], tmp_path / "prometheus.log"), 30, "Prometheus")
        return url

    yield start
    for proc in started:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def ready(url: str, proc: subprocess.Popen[bytes], log: Path) -> bool:
    """Whether Prometheus answers /-/ready; fails at once if it exited."""
    if proc.poll() is not None:
        pytest.fail(f"prometheus exited with {proc.returncode}: {log.read_text()[-2000:]}")
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def query(url: str, expr: str) -> dict[str, Any]:
    """The JSON answer of an instant query, whatever its status."""
    address = f"{url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(address, timeout=10) as response:
            answer: dict[str, Any] = json.load(response)
    except urllib.error.HTTPError as error:  # a bad query is HTTP 400 with a JSON body
        answer = json.load(error)
    return answer


def query_range(url: str, expr: str, start: float, end: float) -> dict[str, Any]:
    """The JSON answer of a range query with a 1 s step, as Grafana sends for a panel."""
    params = {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": "1"}
    address = f"{url}/api/v1/query_range?" + urllib.parse.urlencode(params)
    with urllib.request.urlopen(address, timeout=10) as response:
        answer: dict[str, Any] = json.load(response)
    return answer


def values(url: str, expr: str) -> list[float]:
    """The values of a successful instant query's vector result."""
    answer = query(url, expr)
    assert answer["status"] == "success", (expr, answer)
    return [float(sample["value"][1]) for sample in answer["data"]["result"]]


def counted(url: str) -> dict[str, float]:
    """Prometheus's latest `taskyard_jobs_total` by outcome."""
    answer = query(url, "sum by (outcome) (taskyard_jobs_total)")
    return {s["metric"]["outcome"]: float(s["value"][1]) for s in answer["data"]["result"]}


def run_producer(tenant_id: int, feed_url: str, env: dict[str, str]) -> None:
    """Send one job of every outcome under the test's prefix."""
    sent = subprocess.run(
        [sys.executable, "-c", PRODUCER, str(tenant_id), feed_url],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert sent.returncode == 0, sent.stderr


def test_every_dashboard_query_runs_on_a_real_prometheus_and_has_data(
    start_worker: Callable[..., WorkerProcess],
    make_tenant: Callable[[str], int],
    sessions: sessionmaker[Session],
    httpserver: HTTPServer,
    settings: Settings,
    prometheus: Callable[[int], str],
) -> None:
    # Given a worker of its own queue prefix and metrics port, scraped every second
    prometheus_binary()
    prefix = f"{settings.queue_prefix}p{int(time.time() * 1000) % 10**9}_"
    metrics_port = free_port()
    env = {"TASKYARD_QUEUE_PREFIX": prefix, "TASKYARD_METRICS_PORT": str(metrics_port)}
    tenant_id = make_tenant("dashboard")
    feed = [{"id": f"r{i}", "name": f"R {i}", "creation_date": "2024-01-02"} for i in range(2)]
    httpserver.expect_request("/feed.json").respond_with_json(feed)
    worker = start_worker(**env)
    wait_for(lambda: serving(metrics_port), 20, "the metrics server")
    url = prometheus(metrics_port)
    began = time.time()
    wait_for(lambda: values(url, 'sum(up{job="taskyard-worker"})') == [1.0], 30, "a scrape")

    # When jobs of every outcome run, in two rounds: Prometheus 2 takes a series' first
    # sample as its start, so only the second round makes rates and quantiles move
    one_round = {"succeeded": 3, "dead": 1, "cancelled": 1, "skipped": 1, "retried": 2}
    for round_ in (1, 2):
        run_producer(tenant_id, httpserver.url_for("/feed.json"), worker_env(**env))
        expected = {outcome: count * round_ for outcome, count in one_round.items()}
        wait_for(lambda e=expected: records(sessions, prefix) == e, 60, f"round {round_}'s jobs")
        wait_for(lambda e=expected: counted(url) == e, 30, f"round {round_} in Prometheus")
    wait_for(lambda: values(url, "count_over_time(up[5m])")[0] >= 5, 30, "a few scrapes")

    # Then every query of every panel is valid PromQL, and every panel has plausible data
    dashboard = json.loads(DASHBOARD.read_text())
    assert {panel["title"] for panel in dashboard["panels"]} == set(PANELS)
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            for variable, value in VARIABLES.items():
                expr = expr.replace(variable, value)
            assert "$" not in expr, f"a Grafana variable this test does not fill in: {expr}"
            got = values(url, expr)
            assert got, f"{panel['title']}: no data for {expr}"
            check = PANELS[panel["title"]]
            assert all(check(v) for v in got), f"{panel['title']}: {expr} gave {got}"

            # And over the run as Grafana draws it: $__rate_interval is 4 scrape intervals
            grafana = target["expr"].replace("$__rate_interval", "4s")
            drawn = query_range(url, grafana, began, time.time())
            assert drawn["status"] == "success", (grafana, drawn)
            points = [float(v) for s in drawn["data"]["result"] for _, v in s["values"]]
            if check is positive:
                assert any(positive(v) for v in points), f"{panel['title']}: {grafana} stays 0"

    # And the per-actor quantile is a number for the actor that ran in both rounds
    by_actor = query(
        url,
        "histogram_quantile(0.95, sum by (le, actor) (rate("
        'taskyard_job_duration_seconds_bucket{actor="ingest_resources"}[5m])))',
    )
    assert [finite(float(s["value"][1])) for s in by_actor["data"]["result"]] == [True], by_actor

    # And a query the engine cannot parse is an error, not an empty success
    assert query(url, "sum by (le (rate(taskyard_jobs_total[5m]))")["status"] == "error"
    worker.stop()
    delete_prefix_queues(dataclasses.replace(settings, queue_prefix=prefix), sessions.kw["bind"])
