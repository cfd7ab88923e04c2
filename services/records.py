"""One job, one shape: what Taskyard knows of a job from its send to its final state."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dramatiq import Message


@dataclass(slots=True, eq=False)
class JobRecord:
    """A job as its record, its outbox row and its publish see it; the one type they share.

    Made from the message when it is sent or held (`middleware.outbox_rows.job_record`),
    and again from the message a worker receives.  The send path fills in
    `body` and `wait_ms` (the outbox row) and `row_id` once the row is written;
    the worker fills in `attempts` and the outcome (`started_at`, `finished_at`,
    `result`).  Each statement takes the columns it writes from the same
    object: `queued()` for the record at send, `outbox_row()` for its outbox
    row, `finished()` for its final statement.
    """

    message_id: str
    # None: a system job, or a message credited to no tenant (its route was refused).
    tenant_id: int | None
    actor: str
    queue: str
    args: dict[str, Any]
    enqueued_at: dt.datetime | None
    # The schedule that sent the message and the slot it ran for; None for other sends.
    schedule_id: int | None = None
    slot_at: dt.datetime | None = None
    # The Dramatiq message it was made from (None when made from a row).
    message: Message[Any] | None = None
    # How long (ms) RabbitMQ is to hold the message before delivering it; None: at once.
    delay: int | None = None
    # The message as Dramatiq encodes it: published as is, and kept in its outbox row.
    body: bytes = b""
    # How long from the send its outbox row is due: the sweeper's grace, or a long delay.
    wait_ms: int = 0
    # Its outbox row's id, once written (None: none, or not yet).
    row_id: int | None = None
    # The attempts made, this one included (0 before the first run).
    attempts: int = 0
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    # What the record keeps of the actor's return value (services/results.py `keep_result`).
    result: Any = None
    result_dropped: str | None = None

    def queued(self) -> dict[str, Any]:
        """The columns of the record written at send (`services.job_control.queued_insert`)."""
        return {
            "message_id": self.message_id,
            "tenant_id": self.tenant_id,
            "actor": self.actor,
            "queue": self.queue,
            "args": self.args,
            "enqueued_at": self.enqueued_at,
            "schedule_id": self.schedule_id,
            "slot_at": self.slot_at,
        }

    def finished(self) -> dict[str, Any]:
        """The columns of a succeeded job's final statement (`services.jobs.finish`)."""
        return {
            "message_id": self.message_id,
            "tenant_id": self.tenant_id,
            "actor": self.actor,
            "queue": self.queue,
            "args": self.args,
            "attempts": self.attempts,
            "enqueued_at": self.enqueued_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "result": self.result,
            "result_dropped": self.result_dropped,
        }

    def outbox_row(self, now: dt.datetime) -> dict[str, Any]:
        """The columns of its outbox row, due `wait_ms` after `now`."""
        return {
            "message_id": self.message_id,
            "tenant_id": self.tenant_id,
            "queue": self.queue,
            "body": self.body.decode(),
            "publish_at": now + dt.timedelta(milliseconds=self.wait_ms),
        }
