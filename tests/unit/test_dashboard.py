"""The Grafana dashboard queries only metrics Taskyard defines, and has every panel it promises."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import promql_parser
import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import create_engine

from middleware.metrics import make_instruments
from middleware.metrics_server import HostCollector

DASHBOARD = (
    Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "dashboards" / "taskyard.json"
)
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text())
    assert isinstance(data, dict)
    return data


def exprs() -> list[str]:
    return [target["expr"] for panel in dashboard()["panels"] for target in panel["targets"]]


def defined_series() -> set[str]:
    """Every series name the worker processes and the metrics server can expose."""
    registry = CollectorRegistry()
    make_instruments(registry)
    host = HostCollector(
        broker_url="amqp://nowhere",
        engine=create_engine("sqlite://"),
        queue_prefix="",
        list_queues=list,
    )
    host.refresh = lambda: None  # type: ignore[method-assign]
    families = [*registry.collect(), *host.collect()]
    return {f.name + suffix for f in families for suffix in SUFFIXES[f.type]}


def test_every_metric_the_dashboard_queries_is_defined() -> None:
    used = {name for expr in exprs() for name in re.findall(r"\btaskyard_[a-z_]+", expr)}
    assert used, "the dashboard queries no Taskyard metric"
    assert used <= defined_series(), f"undefined: {sorted(used - defined_series())}"


def test_every_defined_metric_is_on_the_dashboard() -> None:
    used = " ".join(exprs())
    families = {re.sub(r"(_total|_bucket|_sum|_count)$", "", s) for s in defined_series()}
    assert [f for f in sorted(families) if f not in used] == []


@pytest.mark.parametrize(
    "words",
    [
        "throughput",
        "errors",
        "retries",
        "dead letters",
        "time in queue p50 / p95 / p99",
        "duration",
        "queue depth",
        "top tenants",
        "scheduler lag",
    ],
)
def test_dashboard_has_the_promised_panel(words: str) -> None:
    titles = [panel["title"].lower() for panel in dashboard()["panels"]]
    assert any(words in title for title in titles), titles


@pytest.mark.parametrize("expr", exprs())
def test_every_query_parses_as_promql(expr: str) -> None:
    # Grafana replaces its interval variable before Prometheus sees the query.
    promql_parser.parse(expr.replace("$__rate_interval", "1m"))


def test_a_broken_query_would_be_caught() -> None:
    with pytest.raises(ValueError, match="parenthesis"):
        promql_parser.parse("sum(rate(taskyard_jobs_total[1m])")


def test_panels_do_not_overlap() -> None:
    cells: set[tuple[int, int]] = set()
    for panel in dashboard()["panels"]:
        pos = panel["gridPos"]
        mine = {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not cells & mine, panel["title"]
        assert pos["x"] + pos["w"] <= 24
        cells |= mine
    ids = [panel["id"] for panel in dashboard()["panels"]]
    assert len(ids) == len(set(ids))
