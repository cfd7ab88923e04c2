"""Clears the outbox behind the publisher: rows of confirmed publishes, deleted in batches.

A send is durable once its outbox row commits; the publisher then takes the
message on its own thread and nobody waits for RabbitMQ's confirm.  Each
confirm lands here, and one thread per process deletes the confirmed rows a
batch at a time.  A publish that failed (RabbitMQ away, refusing) leaves its
row for the sweeper, and the failures of a batch make one log line, however
many messages they are.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

from sqlalchemy import Engine

from services import outbox

logger = logging.getLogger("Outbox")

# How long confirms gather before their rows are deleted in one statement.
BATCH_SECONDS = 0.05
# At most one line this often about publishes that failed (their rows wait).
FAILURE_LOG_SECONDS = 5.0
# How long a process that exits waits for what it handed to the publisher.
EXIT_FLUSH_SECONDS = 5.0


class OutboxClearer:
    """Deletes confirmed rows in batches; counts and reports failed publishes."""

    def __init__(
        self,
        engine: Engine,
        *,
        batch_seconds: float = BATCH_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.batch_seconds = batch_seconds
        self.clock = clock
        self._lock = threading.Condition()
        self._done: list[int] = []
        self._outstanding = 0
        self._failed = 0
        self._last_error: BaseException | None = None
        self._last_failure_log = float("-inf")
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self.deleted = 0
        # Publishes that failed since this process started (their rows wait in the outbox).
        self.failed_total = 0

    def watch(self, row_id: int, future: Future[None]) -> None:
        """Delete row `row_id` once `future` (its publish) succeeds; leave it if it fails."""
        self._ensure_thread()
        with self._lock:
            self._outstanding += 1
        future.add_done_callback(lambda done: self._settled(row_id, done))

    def failed(self, count: int, error: BaseException) -> None:
        """Count publishes that failed before they were handed over (their rows wait)."""
        with self._lock:
            self._failed += count
            self.failed_total += count
            self._last_error = error
        self._ensure_thread()
        self._wake.set()

    def _settled(self, row_id: int, future: Future[None]) -> None:
        error: BaseException | None
        if future.cancelled():
            error = RuntimeError("the publish was cancelled")
        else:
            error = future.exception()
        with self._lock:
            self._outstanding -= 1
            if error is None:
                self._done.append(row_id)
            else:
                self._failed += 1
                self.failed_total += 1
                self._last_error = error
            self._lock.notify_all()
        self._wake.set()

    def _ensure_thread(self) -> None:
        if self._thread is not None and self._thread.is_alive() and self._pid == os.getpid():
            return
        with self._lock:
            if self._thread is not None and self._thread.is_alive() and self._pid == os.getpid():
                return
            if self._pid != os.getpid():
                if self._pid:  # a forked child: its parent's publishes are not its own
                    self._done, self._outstanding, self._failed = [], 0, 0
                atexit.register(self.flush, EXIT_FLUSH_SECONDS)
            self._pid = os.getpid()
            self._thread = threading.Thread(
                target=self._loop, name="taskyard-outbox-clearer", daemon=True
            )
            self._thread.start()

    def _loop(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            time.sleep(self.batch_seconds)
            try:
                self.clear_once()
            except Exception:
                # The rows stay; the sweeper publishes them again, and their copies skip.
                logger.warning("Could not delete published outbox rows", exc_info=True)

    def clear_once(self) -> int:
        """Delete the rows confirmed so far and report failures; returns rows deleted."""
        with self._lock:
            done, self._done = self._done, []
            failed, error = self._failed, self._last_error
        if done:
            try:
                with self.engine.connect() as connection:
                    outbox.delete_messages(connection, done)
                    connection.commit()
            except BaseException:
                with self._lock:
                    self._done[:0] = done
                raise
            self.deleted += len(done)
        now = self.clock()
        if failed and now - self._last_failure_log >= FAILURE_LOG_SECONDS:
            with self._lock:
                self._failed -= failed
            self._last_failure_log = now
            logger.warning(
                "%d message(s) not published (%s: %s); they wait in the outbox, and the "
                "sweeper publishes them once RabbitMQ takes them",
                failed,
                type(error).__name__,
                error,
            )
        elif failed:
            self._wake.set()  # reported later, in one line with whatever fails meanwhile
        return len(done)

    def flush(self, timeout: float) -> bool:
        """Wait up to `timeout` for the publishes handed over, then clear; True if all settled."""
        deadline = self.clock() + timeout
        with self._lock:
            while self._outstanding and self.clock() < deadline:
                self._lock.wait(max(0.0, min(0.1, deadline - self.clock())))
            settled = self._outstanding == 0
        try:
            self.clear_once()
        except Exception:
            logger.warning("Could not delete published outbox rows", exc_info=True)
        return settled

    @property
    def outstanding(self) -> int:
        """Publishes handed over and not yet confirmed or failed."""
        with self._lock:
            return self._outstanding
