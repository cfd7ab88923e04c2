"""`taskyard_dependency_up` says which of PostgreSQL and RabbitMQ the metrics server reached."""

from __future__ import annotations

import socket
from typing import Any

from sqlalchemy import create_engine
from sqlalchemy.pool import StaticPool

from db import models  # noqa: F401  (registers the tables on the metadata)
from db.base import Base
from middleware.metrics_server import HostCollector


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def up_samples(collector: HostCollector) -> dict[str, float]:
    families: list[Any] = list(collector.collect())
    family = next(f for f in families if f.name == "taskyard_dependency_up")
    return {s.labels["dependency"]: s.value for s in family.samples}


def test_a_broker_that_refuses_is_0_and_a_database_that_answers_is_1() -> None:
    engine = create_engine("sqlite://", poolclass=StaticPool)
    Base.metadata.create_all(engine)
    collector = HostCollector(
        broker_url=f"amqp://guest:guest@127.0.0.1:{closed_port()}/%2F",
        engine=engine,
        queue_prefix="",
        list_queues=list,
    )

    assert up_samples(collector) == {"broker": 0, "database": 1}


def test_a_database_without_the_schema_is_0() -> None:
    collector = HostCollector(
        broker_url=f"amqp://guest:guest@127.0.0.1:{closed_port()}/%2F",
        engine=create_engine("sqlite://"),
        queue_prefix="",
        list_queues=list,
    )

    assert up_samples(collector)["database"] == 0
