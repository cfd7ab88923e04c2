"""A body the consumer refuses is counted as a dead letter, though Dramatiq never nacks it."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry
from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

from middleware.metrics import Metrics, make_instruments
from middleware.metrics_labels import UNKNOWN_ACTOR
from transport.rabbitmq import Refusal, TaskyardRabbitmqBroker


def test_a_refused_body_counts_as_a_dead_letter_and_reaches_on_poison(tmp_path: Path) -> None:
    # Given Taskyard's RabbitMQ broker (never connected) with the metrics middleware
    engine = create_engine(f"sqlite:///{tmp_path / 'metrics.sqlite3'}")
    metrics = Metrics(session_factory=sessionmaker(engine), queue_prefix="p.")
    registry = CollectorRegistry()
    metrics.registry, metrics.instruments = registry, make_instruments(registry)
    poisoned: list[tuple[str, str]] = []
    broker = TaskyardRabbitmqBroker(
        url="amqp://guest:guest@127.0.0.1:1/%2F",
        middleware=[metrics],
        on_poison=lambda queue, body, reason, error: poisoned.append((queue, reason)),
    )

    # When its consumer refuses a body
    broker.report_poison("p.tenant.7", b"not JSON", Refusal("undecodable", "not a JSON message"))

    # Then the dead letter is kept and counted, under an unknown actor
    assert poisoned == [("p.tenant.7", "undecodable")]
    samples = [
        (sample.labels["actor"], sample.value)
        for metric in registry.collect()
        if metric.name == "taskyard_dead_letters"
        for sample in metric.samples
        if sample.name == "taskyard_dead_letters_total"
    ]
    assert samples == [(UNKNOWN_ACTOR, 1.0)]
    engine.dispose()
