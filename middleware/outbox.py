"""The outbox: the job record at send, sends held by a transaction, long delays, the sweeper."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy.exc
from dramatiq import Message, Worker
from dramatiq.broker import Broker
from dramatiq.middleware import Middleware
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db.models import JOB_DEAD, Tenant
from middleware.context import HeldSend, MessageContext
from middleware.outbox_clearer import OutboxClearer
from middleware.outbox_rows import Send, outbox_row, queued_job, send_engine, write_sends
from middleware.outbox_sweeper import SweeperThread, sweep_due
from middleware.runtime import runtime_of
from services import outbox
from services.errors import SendFailed, UnknownTenant
from services.job_control import QueuedJob, record_queued
from transport.rabbitmq import TaskyardRabbitmqBroker, publish_all

# The database is away: a send goes out anyway and its record is made on arrival.
_DB_DOWN = (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)


@dataclass(frozen=True, slots=True)
class Pending:
    """A send written to the outbox by a transaction, to publish once it has committed."""

    message: Message[Any]
    delay: int | None
    row_id: int
    # The message as encoded in its outbox row: published as is, not encoded again.
    body: bytes


class Outbox(Middleware):
    """Records every send as a queued job, holds a transaction's sends, parks long delays.

    Dramatiq holds a delayed message unacknowledged in worker memory, where
    RabbitMQ's consumer_timeout (30 min by default) closes the channel and
    redelivers it, again and again; so a delay over `delay_max_seconds` waits
    in the outbox table, and the sweeper (a thread per worker process)
    publishes it when due.  Duplicate publishes are harmless: the job record
    makes a second copy of a finished message skip.
    """

    def __init__(
        self,
        *,
        session_factory: sessionmaker[Session],
        delay_max_seconds: float = 60.0,
        poll_seconds: float = 1.0,
        grace_seconds: float = 10.0,
        batch_size: int = 100,
    ) -> None:
        self.logger = logging.getLogger(type(self).__name__)
        self.session_factory = session_factory
        self.delay_max_seconds = delay_max_seconds
        self.poll_seconds = poll_seconds
        # The committing thread publishes its own rows at once; the sweeper
        # takes a row over only after this long, so the two do not race.
        self.grace_seconds = grace_seconds
        self.batch_size = batch_size
        # The send path's one-statement writes run on Core connections of this engine.
        self.sends = send_engine(session_factory.kw["bind"])
        self.sweeper: SweeperThread | None = None
        # Deletes the rows of confirmed publishes, in batches, on a thread of its own.
        self.clearer = OutboxClearer(self.sends)

    def is_long(self, delay: int | None) -> bool:
        """Whether a delay (ms) is too long for RabbitMQ's delay queue."""
        return delay is not None and delay > self.delay_max_seconds * 1000

    def send(self, broker: Broker, message: Message[Any], delay: int | None) -> None:
        """Record a send made outside any transaction, durably, then hand it to the publisher.

        The job's record and its outbox row commit together in PostgreSQL
        (synchronously): from then on the job is not lost, whatever happens to
        this process or to RabbitMQ.  The publisher takes the message from
        there, on its own thread; its confirm deletes the row, and a row left
        behind (RabbitMQ away, the process killed) is published by the sweeper.
        Raises `UnknownTenant` (the job is recorded dead) and `SendFailed` when
        PostgreSQL cannot take the send; nothing is published then.  A message
        that has a record already is neither recorded nor published again.
        """
        job = queued_job(broker, message)
        encoded = message.encode()
        sends = [Send(job, encoded.decode(), self._wait_ms(delay))]
        try:
            if self.sends.dialect.name == "postgresql":
                # One statement in autocommit: one round trip and one commit, no session.
                with self.sends.connect() as connection:
                    written = write_sends(connection, sends).get(message.message_id)
            else:
                with self.session_factory.begin() as session:
                    written = write_sends(session, sends).get(message.message_id)
        except _DB_DOWN as exc:
            raise SendFailed(message.actor_name, message.message_id, exc) from exc
        if written is None:
            return  # the message has a record already: it was sent before, not again
        if written.status == JOB_DEAD and job["tenant_id"] is not None:
            raise UnknownTenant(job["tenant_id"])
        if written.row_id is not None and not self.is_long(delay):
            self.publish(broker, [Pending(message, delay, written.row_id, encoded)])

    def hold(
        self, broker: Broker, ctx: MessageContext, message: Message[Any], delay: int | None
    ) -> None:
        """Hold a send made in a transaction until it commits; refuse an unknown tenant at once."""
        job = queued_job(broker, message)
        tenant_id = job["tenant_id"]
        if tenant_id is not None and tenant_id not in ctx.tenants_known:
            if ctx.session.scalar(select(Tenant.id).where(Tenant.id == tenant_id)) is None:
                # Recorded dead apart: the caller's transaction may well roll back now.
                with self.sends.connect() as connection:
                    record_queued(connection, [job])
                raise UnknownTenant(tenant_id)
            ctx.tenants_known.add(tenant_id)
        ctx.held.append(HeldSend(message=message, delay=delay))

    def write_held(
        self, broker: Broker, session: Session, held: Sequence[HeldSend]
    ) -> list[Pending]:
        """Write held sends (records and outbox rows) in the transaction about to commit."""
        if not held:
            return []
        encoded = [h.message.encode() for h in held]
        written = write_sends(
            session,
            [
                Send(queued_job(broker, h.message), body.decode(), self._wait_ms(h.delay))
                for h, body in zip(held, encoded, strict=True)
            ],
        )
        pending = []
        for h, body in zip(held, encoded, strict=True):
            found = written.get(h.message.message_id)
            if found is not None and found.row_id is not None and not self.is_long(h.delay):
                pending.append(Pending(h.message, h.delay, found.row_id, body))
        return pending

    def publish(self, broker: Broker, pending: Sequence[Pending]) -> None:
        """Hand what a committed transaction wrote to the publisher; nobody waits for it.

        On RabbitMQ each confirm deletes its row (in batches, by the clearer);
        a failed publish leaves its row for the sweeper.  Any other broker (the
        in-process one) publishes at once, and the rows go in one statement.
        """
        if not pending:
            return
        if not isinstance(broker, TaskyardRabbitmqBroker):
            self._publish_now(broker, pending)
            return
        clearer = self.clearer
        failures: list[BaseException] = []
        for item in pending:
            try:
                _, future = broker.enqueue_async(item.message, delay=item.delay, body=item.body)
            except Exception as exc:  # the publisher could not even take it: the row waits
                failures.append(exc)
                continue
            clearer.watch(item.row_id, future)
        if failures:
            clearer.failed(len(failures), failures[-1])

    def _publish_now(self, broker: Broker, pending: Sequence[Pending]) -> None:
        published: list[int] = []
        outcomes = publish_all(
            broker,
            [(item.message, item.delay) for item in pending],
            [item.body for item in pending],
        )
        for item, error in zip(pending, outcomes, strict=True):
            if error is None:
                published.append(item.row_id)
        failed = [error for error in outcomes if error is not None]
        if failed:
            self.logger.error(
                "Could not publish %d message(s) (%s); the sweeper will", len(failed), failed[-1]
            )
        try:
            with self.sends.connect() as connection:
                outbox.delete_messages(connection, published)
        except Exception:
            # The sweeper publishes them again; their job records make the copies skip.
            self.logger.warning(
                "Could not delete %d published row(s)", len(published), exc_info=True
            )

    def retry(self, broker: Broker, message: Message[Any], delay: int | None) -> None:
        """Re-enqueue a retried message: a long backoff waits in the outbox."""
        if self.is_long(delay):
            try:
                with self.session_factory.begin() as session:
                    row = self._row(queued_job(broker, message), message, delay)
                    outbox.add_messages(session, [row])
                return
            except _DB_DOWN as exc:
                self.logger.warning(
                    "Database unreachable (%s); retry kept in RabbitMQ", type(exc).__name__
                )
        broker.enqueue(message, delay=delay)

    def park(self, broker: Broker, message: Message[Any], delay: int | None) -> bool:
        """Write a message that could not be published to the outbox, for the sweeper to send.

        Returns False (and logs) when the database cannot take it either.
        """
        try:
            with self.session_factory.begin() as session:
                row = outbox_row(queued_job(broker, message), message, wait_ms=delay or 0)
                outbox.add_messages(session, [row])
        except Exception:
            self.logger.exception("Could not park %s in the outbox", message.message_id)
            return False
        return True

    def sweep(self, broker: Broker, *, now: dt.datetime | None = None) -> int:
        """Publish every due outbox row now; returns how many."""
        return sweep_due(broker, self.session_factory, now=now, batch_size=self.batch_size)

    def after_worker_boot(self, broker: Broker, worker: Worker) -> None:
        """Start the sweeper thread of this worker process."""
        self.sweeper = SweeperThread(
            self.session_factory, poll_seconds=self.poll_seconds, batch_size=self.batch_size
        )
        self.sweeper.start(broker)

    def before_worker_shutdown(self, broker: Broker, worker: Worker) -> None:
        """Stop the sweeper thread."""
        if self.sweeper is not None:
            self.sweeper.stop()

    def _row(self, job: QueuedJob, message: Message[Any], delay: int | None) -> outbox.OutboxRow:
        return outbox_row(job, message, wait_ms=self._wait_ms(delay))

    def _wait_ms(self, delay: int | None) -> int:
        # A parked row is due when its delay ends; any other row is the committing
        # thread's to publish, and the sweeper's only once its grace has passed.
        grace_ms = 0 if self.is_long(delay) else self.grace_seconds * 1000
        return round((delay or 0) + grace_ms)


def find_outbox(broker: Broker) -> Outbox | None:
    """The outbox of the broker's runtime; None for a broker built without Taskyard's."""
    runtime = runtime_of(broker)
    return runtime.outbox if runtime is not None else None


def sweep_outbox(broker: Broker, *, now: dt.datetime | None = None) -> int:
    """Publish the due outbox rows through `broker` (for a periodic maintenance actor too)."""
    found = find_outbox(broker)
    return found.sweep(broker, now=now) if found is not None else 0
