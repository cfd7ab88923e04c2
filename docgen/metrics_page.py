"""The metrics page: every metric a worker command exposes, from its registry and collectors."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry
from sqlalchemy import create_engine

from middleware.metrics import make_instruments
from middleware.metrics_server import HostCollector

INTRO = """\
# Metrics

Every `dramatiq actors` command serves these on
`http://TASKYARD_METRICS_HOST:TASKYARD_METRICS_PORT/metrics`; the worker
processes' metrics come first, then those the command's metrics server measures
(queue depth, the outbox, the tables). [Metrics, logs and the
dashboard](../operations/monitoring.md) says how they are counted and which
labels are bounded how; [Alerts and runbooks](../operations/runbooks.md) which
of them page someone.

| metric | type | labels | meaning |
| --- | --- | --- | --- |
"""
SUFFIX = {"counter": "_total"}


def _host_collector() -> HostCollector:
    host = HostCollector(
        broker_url="amqp://nowhere",
        engine=create_engine("sqlite://"),
        queue_prefix="",
        list_queues=list,
    )
    host.refresh = lambda: None  # type: ignore[method-assign]  # describe, measure nothing
    return host


def metrics() -> list[tuple[str, str, tuple[str, ...], str]]:
    """(name as exposed, type, labels, help) of every metric, in the order they are exposed."""
    registry = CollectorRegistry()
    make_instruments(registry)
    found: list[tuple[str, str, tuple[str, ...], str]] = []
    # prometheus-client keeps a metric's label names on the metric object only.
    collectors: list[Any] = list(registry._collector_to_names)
    for metric in collectors:
        kind = metric._type
        found.append(
            (
                metric._name + SUFFIX.get(kind, ""),
                kind,
                tuple(metric._labelnames),
                metric._documentation,
            )
        )
    for family in _host_collector().collect():
        labels = tuple(getattr(family, "_labelnames", ()))
        found.append(
            (family.name + SUFFIX.get(family.type, ""), family.type, labels, family.documentation)
        )
    return found


def render() -> str:
    """The page's Markdown."""
    rows = []
    for name, kind, labels, text in metrics():
        shown = ", ".join(labels) if labels else "(none)"
        if kind == "histogram":
            shown += " (and `le`)"
        rows.append(f"| `{name}` | {kind} | {shown} | {text.replace('|', chr(92) + '|')} |")
    return INTRO + "\n".join(rows) + "\n"
