"""What a send writes: its queued job record, its outbox row, and the engine of those writes."""

from __future__ import annotations

import datetime as dt
from typing import Any

from dramatiq import Message
from dramatiq.broker import Broker
from sqlalchemy import Engine, create_engine, event

from db.hot import PREPARE_OPTION
from db.session import refuse_closed_connection
from services.job_control import QueuedJob
from services.outbox import OutboxRow

# Message options a schedule's send carries; they end up on the job record.
SCHEDULE_OPTION = "taskyard_schedule_id"
SLOT_OPTION = "taskyard_slot"


def queued_job(broker: Broker, message: Message[Any]) -> QueuedJob:
    """The job record a message gets when it is sent."""
    tenant_id = message.kwargs.get("tenant_id")
    scoped = broker.get_actor(message.actor_name).options.get("tenant_scoped")
    schedule_id, slot = message.options.get(SCHEDULE_OPTION), message.options.get(SLOT_OPTION)
    return {
        "message_id": message.message_id,
        "tenant_id": tenant_id if scoped and type(tenant_id) is int else None,
        "actor": message.actor_name,
        "queue": message.queue_name.removesuffix(".DQ"),
        "args": dict(message.kwargs),
        "enqueued_at": dt.datetime.fromtimestamp(message.message_timestamp / 1000, dt.UTC),
        "schedule_id": schedule_id if type(schedule_id) is int else None,
        "slot_at": dt.datetime.fromisoformat(slot) if isinstance(slot, str) else None,
    }


def outbox_row(job: QueuedJob, message: Message[Any], *, wait_ms: float) -> OutboxRow:
    """The outbox row of a message, due `wait_ms` from now."""
    return {
        "message_id": message.message_id,
        "tenant_id": job["tenant_id"],
        "queue": job["queue"],
        "body": message.encode().decode(),
        "publish_at": dt.datetime.now(dt.UTC) + dt.timedelta(milliseconds=wait_ms),
    }


def send_engine(engine: Engine) -> Engine:
    """The engine of the send path's one-statement writes: autocommit, no pre-ping.

    On PostgreSQL its commits are asynchronous (synchronous_commit off): a queued
    record lost in a crash is recreated when the message arrives, and a lost
    delete only makes a duplicate, which skips.  Actors' transactions stay durable.
    Without pre-ping: a connection the server closed is replaced at checkout,
    as in `db.session` (one poll(), no round trip).
    """
    if engine.dialect.name != "postgresql":
        return engine.execution_options(isolation_level="AUTOCOMMIT")
    options = {"connect_timeout": 5, "application_name": "taskyard-send"}
    sends = create_engine(
        engine.url,
        isolation_level="AUTOCOMMIT",
        connect_args={**options, "options": "-c synchronous_commit=off"},
        # Hot statements prepared or not, as on the engine it comes from.
        execution_options={
            PREPARE_OPTION: engine.get_execution_options().get(PREPARE_OPTION, False)
        },
    )
    event.listen(sends, "checkout", refuse_closed_connection)
    return sends
