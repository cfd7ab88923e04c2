"""`actor.send_many`: one call, one commit for the records, one burst of pipelined confirms."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import pika
import pytest
from marshmallow import Schema, fields
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

import brokers
from actors.base import InvalidArguments, TaskyardActor, taskyard_actor
from db.models import JOB_QUEUED, Job
from services.errors import UnknownTenant
from settings import Settings
from tests.support import queue_state, wait_for


class Args(Schema):
    tenant_id = fields.Integer(required=True, strict=True)
    n = fields.Integer(required=True, strict=True)


@pytest.fixture(scope="module")
def side_broker(settings: Settings) -> Iterator[tuple[Any, TaskyardActor, Settings]]:
    """A broker of its own queue prefix, which no worker of this run consumes."""
    side = dataclasses.replace(settings, queue_prefix=f"{settings.queue_prefix}sendmany.")
    broker = brokers.build_broker(side)

    @taskyard_actor(name="send_many_probe", broker=broker, schema=Args)
    def probe(tenant_id: int, n: int) -> None:
        """Never run: nothing consumes this prefix."""

    yield broker, probe, side
    broker.close()


def _queue_count(settings: Settings, name: str) -> int:
    """Messages ready in a queue (0 while the publisher has not declared it yet)."""
    state = queue_state(settings.broker_url, name)
    return 0 if state is None else state[0]


def _delete_queues(settings: Settings, name: str) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(settings.broker_url))
    channel = connection.channel()
    for queue in (name, f"{name}.DQ", f"{name}.XQ"):
        channel.queue_delete(queue)
    connection.close()


def test_send_many_records_and_publishes_every_message(
    side_broker: tuple[Any, TaskyardActor, Settings],
    make_tenant: Callable[[str], int],
    sessions: sessionmaker[Session],
) -> None:
    _, probe, side = side_broker
    tenant_id = make_tenant("send-many")
    queue = side.tenant_queue(tenant_id)
    try:
        sent = probe.send_many([{"tenant_id": tenant_id, "n": n} for n in range(500)])

        assert len({m.message_id for m in sent}) == 500
        # Durable when send_many returns; published by the publisher's thread right after
        wait_for(lambda: _queue_count(side, queue) == 500, what="500 messages in the queue")
        with sessions() as session:
            statuses = session.execute(
                select(Job.status, func.count())
                .where(Job.message_id.in_([m.message_id for m in sent]))
                .group_by(Job.status)
            ).all()
        assert statuses == [(JOB_QUEUED, 500)]
    finally:
        _delete_queues(side, queue)


def test_one_bad_message_refuses_the_whole_batch_and_names_it(
    side_broker: tuple[Any, TaskyardActor, Settings],
    make_tenant: Callable[[str], int],
    sessions: sessionmaker[Session],
) -> None:
    _, probe, _ = side_broker
    tenant_id = make_tenant("send-many-bad")
    batch: list[dict[str, Any]] = [{"tenant_id": tenant_id, "n": n} for n in range(5)]
    batch[3] = {"tenant_id": tenant_id, "n": "three"}

    with pytest.raises(InvalidArguments, match=r"message 3: .*n"):
        probe.send_many(batch)

    with sessions() as session:
        assert session.scalar(select(func.count()).where(Job.tenant_id == tenant_id)) == 0


def test_an_unknown_tenant_in_the_batch_sends_nothing(
    side_broker: tuple[Any, TaskyardActor, Settings],
    make_tenant: Callable[[str], int],
    sessions: sessionmaker[Session],
) -> None:
    _, probe, side = side_broker
    tenant_id = make_tenant("send-many-unknown")
    queue = side.tenant_queue(tenant_id)
    missing = 9_000_000_000 + tenant_id
    try:
        with pytest.raises(UnknownTenant):
            probe.send_many([{"tenant_id": tenant_id, "n": 1}, {"tenant_id": missing, "n": 2}])
        with sessions() as session:
            kept = session.scalar(select(func.count()).where(Job.tenant_id == tenant_id))
        assert kept == 0
    finally:
        _delete_queues(side, queue)
