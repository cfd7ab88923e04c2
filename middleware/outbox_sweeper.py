"""The outbox sweeper: publishes due outbox rows, from a thread in every worker process."""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from dramatiq import Message
from dramatiq.broker import Broker
from dramatiq.errors import DecodeError
from sqlalchemy.orm import Session, sessionmaker

from db.models import OutboxMessage
from services import outbox
from services.dead_letters import record_dead_letter
from services.errors import BrokerRefused, describe_error
from services.jobs import mark_undeliverable
from transport.rabbitmq import publish_all

logger = logging.getLogger("Outbox")

# A row RabbitMQ refused (its queue exists with other arguments, the user may not use
# it) waits this long before the sweeper tries it again, out of the way of the rows
# behind it: the refusal lasts until someone changes RabbitMQ.  Refusals are reported
# in one line at most this often too.
REFUSED_RETRY_SECONDS = 60.0
# Queues named in one report line; the rest are counted.
REPORTED_QUEUES = 5
# The dead-letter reason of a body that cannot be decoded (as the consumer refuses one).
UNDECODABLE = "undecodable"


class RefusedRows:
    """Counts the outbox rows RabbitMQ refused, and reports them in one line per period."""

    def __init__(
        self,
        *,
        period: float = REFUSED_RETRY_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.period = period
        self.clock = clock
        self._lock = threading.Lock()
        self._count = 0
        self._queues: dict[str, int] = {}
        self._last: BrokerRefused | None = None
        self._reported_at = float("-inf")

    def add(self, errors: Sequence[BrokerRefused]) -> None:
        """Count refused rows, and report them if the last line is a period old."""
        if not errors:
            return
        with self._lock:
            self._count += len(errors)
            for error in errors:
                self._queues[error.queue_name] = self._queues.get(error.queue_name, 0) + 1
            self._last = errors[-1]
            now = self.clock()
            if now - self._reported_at < self.period:
                return
            self._reported_at = now
            count, queues, last = self._count, self._queues, self._last
            self._count, self._queues = 0, {}
        named = sorted(queues, key=queues.__getitem__, reverse=True)
        shown = ", ".join(named[:REPORTED_QUEUES])
        if len(named) > REPORTED_QUEUES:
            shown += f" and {len(named) - REPORTED_QUEUES} more"
        logger.error(
            "RabbitMQ refused %d outbox message(s) for queue(s) %s (last: %s); their jobs stay "
            "queued and the sweeper tries them again every %g s",
            count,
            shown,
            last,
            self.period,
        )


# This process's report of refused rows (every sweeper of the process adds to it).
REFUSED_ROWS = RefusedRows()


def sweep_due(
    broker: Broker,
    session_factory: sessionmaker[Session],
    *,
    now: dt.datetime | None = None,
    batch_size: int = 100,
) -> int:
    """Publish every row due by `now` (long delays, a crash's leftovers); returns how many.

    Each batch is locked with SKIP LOCKED, published, deleted and committed, so
    sweepers in many processes share the work.  A crash after a publish and
    before the commit publishes that batch again: harmless, because the job
    record makes a second copy of a finished message skip.  A row RabbitMQ
    refuses (`BrokerRefused`) stays, due again `REFUSED_RETRY_SECONDS` later; a
    row that cannot be decoded becomes a dead letter (reason `undecodable`) and
    leaves the outbox; any other failure stops the sweep and is raised.
    """
    refusals: list[BrokerRefused] = []
    try:
        return _sweep_batches(broker, session_factory, now, batch_size, refusals)
    finally:
        # One report for the whole sweep, whatever stopped it.
        REFUSED_ROWS.add(refusals)


def _sweep_batches(
    broker: Broker,
    session_factory: sessionmaker[Session],
    now: dt.datetime | None,
    batch_size: int,
    refusals: list[BrokerRefused],
) -> int:
    total = 0
    while True:
        with session_factory.begin() as session:
            at = now or dt.datetime.now(dt.UTC)
            rows = outbox.claim_due(session, now=at, limit=batch_size)
            decoded: list[tuple[int, Message[Any]]] = []
            undecodable: list[int] = []
            last_error = ""
            for row in rows:
                try:
                    message = Message.decode(row.body.encode())
                except DecodeError as exc:
                    last_error = _keep_undecodable(session, row, exc)
                    undecodable.append(row.id)
                    continue
                # Published now, on its own queue: whatever delay it had has passed.
                message.options.pop("eta", None)
                decoded.append((row.id, message.copy(queue_name=row.queue)))
            outcomes = publish_all(broker, [(message, None) for _, message in decoded])
            done, refused = [], []
            failed: Exception | None = None
            for (row_id, _), error in zip(decoded, outcomes, strict=True):
                if error is None:
                    done.append(row_id)
                elif isinstance(error, BrokerRefused):
                    refused.append(row_id)
                    refusals.append(error)
                elif failed is None:
                    failed = error
            # Published, or kept as dead letters: either way out of the outbox, so the
            # rows behind them come up in the next batch.
            outbox.delete_messages(session, done + undecodable)
            later = at + dt.timedelta(seconds=REFUSED_RETRY_SECONDS)
            outbox.postpone_messages(session, refused, later)
        if undecodable:
            # One line a batch, not one a row.
            logger.error(
                "%d outbox row(s) cannot be decoded (last: %s); kept as dead letters "
                "(reason %s) and removed from the outbox",
                len(undecodable),
                last_error,
                UNDECODABLE,
            )
        if failed is not None:
            # RabbitMQ is away: the rest waits for the next round.
            raise failed
        total += len(done)
        if len(rows) < batch_size:
            return total


def _keep_undecodable(session: Session, row: OutboxMessage, exc: DecodeError) -> str:
    """Move an outbox row whose body cannot be decoded to the dead letters; the error.

    It would never publish, and left in place it would be claimed again at the
    head of every batch.  Kept as any undecodable body is (reason `undecodable`,
    the raw body, not requeueable), under its row's message id, queue and
    tenant, which Taskyard wrote beside the body; the caller deletes the row in
    the same transaction, so the dead letter and the deletion commit together.
    Its job record, if still waiting, becomes dead with the same error.
    """
    cause = exc.__cause__ or exc
    error = f"outbox row {row.id} cannot be decoded ({describe_error(cause)})"
    # The actor is named in the body; its job record (same queue and tenant) knows it.
    actor = mark_undeliverable(
        session, row.message_id, queue=row.queue, tenant_id=row.tenant_id, error=error
    )
    record_dead_letter(
        session,
        message_id=row.message_id,
        queue=row.queue,
        reason=UNDECODABLE,
        error=error,
        traceback=None,
        attempts=0,
        actor=actor,
        tenant_id=row.tenant_id,
        raw_body=row.body,
        replace=False,
    )
    return error


class SweeperThread:
    """Calls `sweep_due` every `poll_seconds` until stopped (a quick indexed query when idle)."""

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        *,
        poll_seconds: float,
        batch_size: int,
        also: Sequence[Callable[[Broker], object]] = (),
    ) -> None:
        self.session_factory = session_factory
        # Called after each sweep (and after a failed one): work that shares this thread.
        self.also = list(also)
        self.poll_seconds = poll_seconds
        self.batch_size = batch_size
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, broker: Broker) -> None:
        """Start sweeping in the background."""
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._loop, args=(broker,), name="taskyard-outbox-sweeper", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop sweeping; the batch being published is finished first."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _loop(self, broker: Broker) -> None:
        failing: str | None = None
        while not self._stop.wait(self.poll_seconds):
            for work in self.also:
                try:
                    work(broker)
                except Exception:
                    logger.warning("Sweeper work %r failed", work, exc_info=True)
            try:
                swept = sweep_due(broker, self.session_factory, batch_size=self.batch_size)
            except Exception as exc:
                # The database or RabbitMQ may be away for a while; the next round tries
                # again.  One line when it starts failing (or fails otherwise), not one a
                # second: an outage must not fill the disk with the same traceback.
                why = type(exc).__name__
                if why != failing:
                    logger.warning(
                        "Could not sweep the outbox (%s: %s); retrying every %g s",
                        why,
                        exc,
                        self.poll_seconds,
                    )
                failing = why
                continue
            if failing is not None:
                logger.info("Sweeping the outbox again")
                failing = None
            if swept:
                logger.info("Published %d message(s) from the outbox", swept)
