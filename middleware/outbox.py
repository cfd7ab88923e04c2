"""The outbox: the job record at send, sends held by a transaction, long delays, the sweeper."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy.exc
from dramatiq import Message, Worker
from dramatiq.broker import Broker
from dramatiq.middleware import Middleware
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db.models import JOB_DEAD, Tenant
from middleware.context import MessageContext, current_context, enter_context, leave_context
from middleware.follow_ups import check_follow_ups
from middleware.outbox_clearer import OutboxClearer
from middleware.outbox_rows import job_record, send_engine, write_sends
from middleware.outbox_sweeper import SweeperThread, sweep_due
from middleware.runtime import runtime_of
from services import outbox
from services.errors import SendFailed, UnknownTenant, describe_error
from services.job_control import record_queued
from services.records import JobRecord
from transport.rabbitmq import TaskyardRabbitmqBroker, check_priority, publish_all, publish_now

# The database is away: a send goes out anyway and its record is made on arrival.
_DB_DOWN = (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)


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
        # Called by the sweeper's thread after each sweep (groups whose completion a
        # crash left unclaimed); each paces itself.
        self.also: list[Callable[[Broker], object]] = []

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

        Raises, with nothing recorded, `PriorityRefused` for a `broker_priority`
        its queue cannot keep, and `BrokerRefused` when this process's publisher
        has just had RabbitMQ refuse the message's queue.  A refusal that comes
        after `send` returned leaves the job queued and its row in the outbox:
        the clearer and the sweeper report it, and the sweeper tries the row
        again now and then, so the job goes once RabbitMQ is put right.
        """
        check_priority(broker, message)
        check_follow_ups(broker, message)
        if isinstance(broker, TaskyardRabbitmqBroker):
            refused = broker.refusal_of(message.queue_name)
            if refused is not None:
                raise refused
        record = self._encoded(job_record(broker, message, delay=delay))
        try:
            if self.sends.dialect.name == "postgresql":
                # One statement in autocommit: one round trip and one commit, no session.
                with self.sends.connect() as connection:
                    written = write_sends(connection, [record]).get(message.message_id)
            else:
                with self.session_factory.begin() as session:
                    written = write_sends(session, [record]).get(message.message_id)
        except _DB_DOWN as exc:
            raise SendFailed(message.actor_name, message.message_id, exc) from exc
        if written is None:
            return  # the message has a record already: it was sent before, not again
        if written.status == JOB_DEAD and record.tenant_id is not None:
            raise UnknownTenant(record.tenant_id)
        if record.row_id is not None and not self.is_long(delay):
            self.publish(broker, [record])

    def submit(self, broker: Broker, message: Message[Any], delay: int | None) -> None:
        """Send `message` from wherever this thread is: the one rule of every send's path.

        Held for the transaction this thread has open (a job's body, its failure's
        transaction, a producer's `taskyard_transaction`), else recorded and
        published now (`send`): never held where nothing would write it.
        """
        ctx = current_context()
        if ctx is not None and ctx.holding:
            self.hold(broker, ctx, message, delay)
        else:
            self.send(broker, message, delay)

    def hold(
        self, broker: Broker, ctx: MessageContext, message: Message[Any], delay: int | None
    ) -> None:
        """Hold a send made in a transaction until it commits; refuse an unknown tenant at once.

        Raises `PriorityRefused` for a `broker_priority` its queue cannot keep, and
        `FollowUpRefused` for a callback or pipeline stage outside the job's tenant.
        """
        check_priority(broker, message)
        check_follow_ups(broker, message)
        record = job_record(broker, message, delay=delay)
        tenant_id = record.tenant_id
        if tenant_id is not None and tenant_id not in ctx.tenants_known:
            if ctx.session.scalar(select(Tenant.id).where(Tenant.id == tenant_id)) is None:
                # Recorded dead apart: the caller's transaction may well roll back now.
                with self.sends.connect() as connection:
                    record_queued(connection, [record])
                raise UnknownTenant(tenant_id)
            ctx.tenants_known.add(tenant_id)
        ctx.held.append(record)

    def write_held(self, session: Session, held: Sequence[JobRecord]) -> list[JobRecord]:
        """Write held sends (records and outbox rows) in the transaction about to commit.

        Returns the records to publish once it has committed: those written
        queued, with an outbox row, and not waiting out a long delay.
        """
        if not held:
            return []
        sends = [self._encoded(record) for record in held]
        written = write_sends(session, sends)
        return [
            record
            for record in sends
            if record.message_id in written
            and record.row_id is not None
            and not self.is_long(record.delay)
        ]

    def follow_on(self, broker: Broker, work: Callable[[MessageContext], object]) -> bool:
        """Run `work` in a transaction of its own, its sends held and published once it commits.

        For work that follows a committed job (`context.after_commit`) or a
        sweeper's.  The job's context, if any, is current again afterwards.
        A failure is logged and rolled back; False then.
        """
        session = self.session_factory()
        ctx = MessageContext(message=None, session=session)
        token = enter_context(ctx)
        pending: list[JobRecord] = []
        try:
            with session.begin():
                work(ctx)
                held, ctx.held = ctx.held, []
                pending = self.write_held(session, held)
        except Exception as exc:
            self.logger.warning(
                "Work after a commit failed (%s); a sweeper completes it", describe_error(exc)
            )
            return False
        finally:
            leave_context(token)
            session.close()
        self.publish(broker, pending)
        return True

    def publish(self, broker: Broker, pending: Sequence[JobRecord]) -> None:
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
            assert item.message is not None and item.row_id is not None
            try:
                _, future = broker.enqueue_async(item.message, delay=item.delay, body=item.body)
            except Exception as exc:  # the publisher could not even take it: the row waits
                failures.append(exc)
                continue
            clearer.watch(item.row_id, future)
        if failures:
            clearer.failed(len(failures), failures[-1])

    def _publish_now(self, broker: Broker, pending: Sequence[JobRecord]) -> None:
        published: list[int] = []
        outcomes = publish_all(
            broker,
            [(item.message, item.delay) for item in pending if item.message is not None],
            [item.body for item in pending if item.message is not None],
        )
        sent = [item for item in pending if item.message is not None]
        for item, error in zip(sent, outcomes, strict=True):
            if error is None and item.row_id is not None:
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
                    outbox.add_messages(
                        session, [self._encoded(job_record(broker, message, delay=delay))]
                    )
                return
            except _DB_DOWN as exc:
                self.logger.warning(
                    "Database unreachable (%s); retry kept in RabbitMQ", type(exc).__name__
                )
        publish_now(broker, message, delay=delay)

    def park(self, broker: Broker, message: Message[Any], delay: int | None) -> bool:
        """Write a message that could not be published to the outbox, for the sweeper to send.

        Returns False (and logs) when the database cannot take it either.
        """
        try:
            with self.session_factory.begin() as session:
                record = job_record(broker, message)
                record.body, record.wait_ms = message.encode(), delay or 0
                outbox.add_messages(session, [record])
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
            self.session_factory,
            poll_seconds=self.poll_seconds,
            batch_size=self.batch_size,
            also=self.also,
        )
        self.sweeper.start(broker)

    def before_worker_shutdown(self, broker: Broker, worker: Worker) -> None:
        """Stop the sweeper thread."""
        if self.sweeper is not None:
            self.sweeper.stop()

    def _encoded(self, record: JobRecord) -> JobRecord:
        """`record` with its message's encoded body and its outbox row's due time set."""
        assert record.message is not None
        record.body = record.message.encode()
        # A parked row is due when its delay ends; any other row is the committing
        # thread's to publish, and the sweeper's only once its grace has passed.
        grace_ms = 0 if self.is_long(record.delay) else self.grace_seconds * 1000
        record.wait_ms = round((record.delay or 0) + grace_ms)
        return record


def find_outbox(broker: Broker) -> Outbox | None:
    """The outbox of the broker's runtime; None for a broker built without Taskyard's."""
    runtime = runtime_of(broker)
    return runtime.outbox if runtime is not None else None


def sweep_outbox(broker: Broker, *, now: dt.datetime | None = None) -> int:
    """Publish the due outbox rows through `broker` (for a periodic maintenance actor too)."""
    found = find_outbox(broker)
    return found.sweep(broker, now=now) if found is not None else 0
