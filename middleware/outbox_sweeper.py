"""The outbox sweeper: publishes due outbox rows, from a thread in every worker process."""

from __future__ import annotations

import datetime as dt
import logging
import threading
from typing import Any

from dramatiq import Message
from dramatiq.broker import Broker
from dramatiq.errors import DecodeError
from sqlalchemy.orm import Session, sessionmaker

from services import outbox
from transport.rabbitmq import publish_all

logger = logging.getLogger("Outbox")


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
    record makes a second copy of a finished message skip.
    """
    total = 0
    while True:
        with session_factory.begin() as session:
            rows = outbox.claim_due(session, now=now or dt.datetime.now(dt.UTC), limit=batch_size)
            decoded: list[tuple[int, Message[Any]]] = []
            for row in rows:
                try:
                    message = Message.decode(row.body.encode())
                except DecodeError:
                    logger.error("Outbox row %d cannot be decoded; left in place", row.id)
                    continue
                # Published now, on its own queue: whatever delay it had has passed.
                message.options.pop("eta", None)
                decoded.append((row.id, message.copy(queue_name=row.queue)))
            outcomes = publish_all(broker, [(message, None) for _, message in decoded])
            pairs = zip(decoded, outcomes, strict=True)
            done = [row_id for (row_id, _), error in pairs if error is None]
            failed = next((error for error in outcomes if error is not None), None)
            outbox.delete_messages(session, done)
        if failed is not None:
            # RabbitMQ is away or refusing: the rest waits for the next round.
            raise failed
        total += len(done)
        if len(rows) < batch_size:
            return total


class SweeperThread:
    """Calls `sweep_due` every `poll_seconds` until stopped (a quick indexed query when idle)."""

    def __init__(
        self, session_factory: sessionmaker[Session], *, poll_seconds: float, batch_size: int
    ) -> None:
        self.session_factory = session_factory
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
