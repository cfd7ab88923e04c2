"""What a send writes: its queued job record, its outbox row, and the engine of those writes."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, cast

from dramatiq import Message
from dramatiq.broker import Broker
from dramatiq.common import q_name
from sqlalchemy import (
    DateTime,
    Engine,
    Integer,
    Table,
    Text,
    bindparam,
    column,
    create_engine,
    event,
    func,
    insert,
    literal_column,
    select,
)

from db.hot import PREPARE_OPTION, Executor, HotStatement, connection_of
from db.models import JOB_DEAD, JOB_QUEUED, Job, OutboxMessage
from db.session import refuse_closed_connection
from middleware.actor_options import is_taskyard
from services import outbox
from services.errors import UnknownTenant, valid_tenant_id
from services.job_control import (
    queued_arrays,
    queued_insert,
    queued_insert_many,
    record_queued,
    text_array,
)
from services.records import JobRecord

# Message options a schedule's send carries; they end up on the job record.
SCHEDULE_OPTION = "taskyard_schedule_id"
SLOT_OPTION = "taskyard_slot"


def job_record(
    broker: Broker, message: Message[Any], *, delay: int | None = None, credited: bool = True
) -> JobRecord:
    """The record of a message, as its send writes it and its worker finishes it.

    The tenant is the message's `tenant_id` argument for a tenant-scoped actor
    (None for a system actor, and when not `credited`: a message whose route
    was refused is not the named tenant's job).
    """
    tenant_id = message.kwargs.get("tenant_id")
    actor = broker.get_actor(message.actor_name)
    scoped = actor.options.get("tenant_scoped")
    # A plain Dramatiq actor's positional arguments are kept beside its keywords.
    args = (
        dict(message.kwargs)
        if is_taskyard(actor)
        else {"args": list(message.args), "kwargs": dict(message.kwargs)}
    )
    schedule_id, slot = message.options.get(SCHEDULE_OPTION), message.options.get(SLOT_OPTION)
    return JobRecord(
        message_id=message.message_id,
        tenant_id=tenant_id if scoped and credited and valid_tenant_id(tenant_id) else None,
        actor=message.actor_name,
        queue=q_name(message.queue_name),
        args=args,
        enqueued_at=dt.datetime.fromtimestamp(message.message_timestamp / 1000, dt.UTC),
        schedule_id=schedule_id if type(schedule_id) is int else None,
        slot_at=dt.datetime.fromisoformat(slot) if isinstance(slot, str) else None,
        message=message,
        delay=delay,
    )


class Written(NamedTuple):
    """What `write_sends` made of one message whose record is new."""

    # queued, or dead (a tenant that does not exist).
    status: str
    # Its outbox row, or None for a dead record (nothing to publish).
    row_id: int | None


def _one_statement(record: Any, rows_of: Callable[[Any], Any]) -> Any:
    """`record` (the INSERT of job records), then an outbox row for each record it made queued.

    `rows_of(job)` selects the outbox rows' values (message_id, tenant_id,
    queue, body, publish_at) from the new records; their tenant and queue are
    the records' own, so the two cannot disagree.  The statement returns each
    new record's message id and status, and its outbox row's id (NULL: none).
    """
    jobs, box = cast(Table, Job.__table__), cast(Table, OutboxMessage.__table__)
    job = record.returning(jobs.c.tenant_id, jobs.c.queue).cte("job")
    queued = rows_of(job).where(job.c.status == literal_column(f"'{JOB_QUEUED}'"))
    columns = ["message_id", "tenant_id", "queue", "body", "publish_at"]
    rows = (
        insert(box)
        .from_select(columns, queued)
        .returning(box.c.message_id, box.c.id)
        .cte("outbox_row")
    )
    return select(job.c.message_id, job.c.status, rows.c.id).select_from(
        job.outerjoin(rows, rows.c.message_id == job.c.message_id)
    )


def _build_send(dialect: str) -> Any:
    """PostgreSQL: one send's record and, when it is queued, its outbox row, in one statement.

    The record is `queued_insert` itself (unknown tenant: dead; existing record:
    left alone), so the one statement decides exactly as the record alone does.
    """

    def rows_of(job: Any) -> Any:
        body = bindparam("body", type_=Text())
        due = bindparam("publish_at", type_=DateTime(timezone=True))
        return select(job.c.message_id, job.c.tenant_id, job.c.queue, body, due)

    return _one_statement(queued_insert(dialect), rows_of)


def _build_send_many(dialect: str) -> Any:
    """PostgreSQL: many sends' records and the outbox rows of the queued ones, in one statement.

    The records are `queued_insert_many`; each outbox row is due `wait_ms`
    after the statement's `now`.
    """
    held = (
        func.unnest(
            text_array("message_ids", Text()),
            text_array("bodies", Text()),
            text_array("waits_ms", Integer()),
        )
        .table_valued(
            column("message_id", Text()), column("body", Text()), column("wait_ms", Integer())
        )
        .render_derived(name="held")
    )
    now = bindparam("now", type_=DateTime(timezone=True))
    due = now + held.c.wait_ms * literal_column("INTERVAL '1 millisecond'")

    def rows_of(job: Any) -> Any:
        return select(job.c.message_id, job.c.tenant_id, job.c.queue, held.c.body, due).select_from(
            job.join(held, held.c.message_id == job.c.message_id)
        )

    return _one_statement(queued_insert_many(dialect), rows_of)


# Run for every send: see db.hot.
_SEND = HotStatement(_build_send, json_params=["args"])
_SEND_MANY = HotStatement(_build_send_many)


def write_sends(executor: Executor, sends: Sequence[JobRecord]) -> dict[str, Written]:
    """Record sent messages, and write the outbox rows of those recorded queued.

    Each record carries its `body` and `wait_ms` (its outbox row's).  Returns
    what was written for each message whose record is new: one whose
    record existed already gets neither a record nor an outbox row (and is
    not published again).  One statement on PostgreSQL, so a single send in
    autocommit is one round trip and one commit; elsewhere (SQLite) the
    records, then the rows, in the executor's transaction.
    """
    if not sends:
        return {}
    connection = connection_of(executor)
    if connection.dialect.name != "postgresql":
        return _write_apart(executor, sends)
    now = dt.datetime.now(dt.UTC)
    if len(sends) == 1:
        record = sends[0]
        error = f"UnknownTenant: {UnknownTenant(record.tenant_id or 0)}"
        due = now + dt.timedelta(milliseconds=record.wait_ms)
        body = record.body.decode()
        params = {**record.queued(), "now": now, "error": error, "body": body, "publish_at": due}
        result = _SEND.execute(connection, params)
    else:
        params = queued_arrays(sends, now)
        params["bodies"] = [send.body.decode() for send in sends]
        params["waits_ms"] = [send.wait_ms for send in sends]
        result = _SEND_MANY.execute(connection, params)
    written: dict[str, Written] = {}
    for found in result:
        message_id, status, row_id = tuple(found)
        written[message_id] = Written(status, row_id)
    return _note_rows(sends, written)


def _note_rows(sends: Sequence[JobRecord], written: dict[str, Written]) -> dict[str, Written]:
    """Set each record's `row_id` from what was written; returns `written`."""
    for record in sends:
        found = written.get(record.message_id)
        if found is not None:
            record.row_id = found.row_id
    return written


def _write_apart(executor: Executor, sends: Sequence[JobRecord]) -> dict[str, Written]:
    statuses = record_queued(executor, sends)
    queued = [record for record in sends if statuses.get(record.message_id) == JOB_QUEUED]
    ids = outbox.add_messages(executor, queued)
    written = {
        message_id: Written(status, None if status == JOB_DEAD else ids[message_id])
        for message_id, status in statuses.items()
    }
    return _note_rows(sends, written)


def send_engine(engine: Engine) -> Engine:
    """The engine of the send path's one-statement writes: autocommit, no pre-ping.

    Its commits are as durable as the database's own (synchronous_commit is
    left to the server, `on` unless an operator chose otherwise): a send
    returns once its record and outbox row are on disk, whatever happens to
    the process or to RabbitMQ then.  Without pre-ping: a connection the
    server closed is replaced at checkout, as in `db.session` (one poll(), no
    round trip).
    """
    if engine.dialect.name != "postgresql":
        return engine.execution_options(isolation_level="AUTOCOMMIT")
    sends = create_engine(
        engine.url,
        isolation_level="AUTOCOMMIT",
        connect_args={"connect_timeout": 5, "application_name": "taskyard-send"},
        # Hot statements prepared or not, as on the engine it comes from.
        execution_options={
            PREPARE_OPTION: engine.get_execution_options().get(PREPARE_OPTION, False)
        },
    )
    event.listen(sends, "checkout", refuse_closed_connection)
    return sends
