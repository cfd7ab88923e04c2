"""The group commit: the records of jobs that opened no transaction, many in one statement.

A job whose actor never touched its session has nothing of its own to
commit; its record alone would cost it a transaction (a round trip and an
fsync).  Instead the worker thread hands the record here and moves on to
its next message; one writer thread per process writes every record handed
over since its last write in one statement and one commit, and only then are
those messages acknowledged.  Nothing is acknowledged before its record is
durable: a process killed before the commit leaves the messages unacknowledged,
and RabbitMQ delivers them again.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable

from sqlalchemy import Engine
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session

from services import jobs
from services.dead_letters import record_dead_letter
from services.errors import MessageIdTaken, describe_error
from services.records import JobRecord

# How many records one statement writes at most.
MAX_BATCH = 500
# The wait between two tries of a batch the database did not take, growing up to the last.
RETRY_DELAYS = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
_DB_DOWN = (OperationalError, InterfaceError)


class Ticket:
    """One record handed to the group commit: settled once it is durable (or cannot be)."""

    __slots__ = ("_callbacks", "_event", "_lock", "job", "written")

    def __init__(self, job: JobRecord) -> None:
        self.job = job
        # After settling: False when the record was final already (a duplicate) or not written.
        self.written = False
        self._lock = threading.Lock()
        self._event = threading.Event()
        self._callbacks: list[Callable[[], None]] = []

    @property
    def settled(self) -> bool:
        """Whether the group commit is done with this record."""
        return self._event.is_set()

    def when_settled(self, callback: Callable[[], None]) -> None:
        """Call `callback` once the record is durable (at once if it already is)."""
        with self._lock:
            if not self._event.is_set():
                self._callbacks.append(callback)
                return
        callback()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the record is durable; False on timeout."""
        return self._event.wait(timeout)

    def settle(self, *, written: bool) -> None:
        """Mark the record done and run what waited for it (the message's acknowledgement)."""
        with self._lock:
            self.written = written
            self._event.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            try:
                callback()
            except Exception:
                logging.getLogger("GroupCommit").exception("A settled record's callback failed")


class GroupCommit:
    """One writer thread per process: the final records of no-transaction jobs, in groups.

    There is no timer: the writer takes everything handed over while its last
    statement ran, so at low load a record is written at once and at high
    load each statement carries as many as finished meanwhile.
    """

    def __init__(self, engine: Engine, *, linger_seconds: float = 0.0) -> None:
        self.logger = logging.getLogger(type(self).__name__)
        self.engine = engine
        self.linger_seconds = linger_seconds
        self._cond = threading.Condition()
        self._waiting: list[Ticket] = []
        self._writing = 0
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.written = 0
        self.duplicates = 0

    def submit(self, job: JobRecord) -> Ticket:
        """Hand a succeeded job's record over; the ticket settles once it is durable."""
        ticket = Ticket(job)
        with self._cond:
            if self._thread is None or not self._thread.is_alive():
                self._stopping = False
                self._thread = threading.Thread(
                    target=self._loop, name="taskyard-group-commit", daemon=True
                )
                self._thread.start()
            self._waiting.append(ticket)
            self._cond.notify_all()
        return ticket

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every record handed over so far is durable (or given up); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._waiting or self._writing:
                left = deadline - time.monotonic()
                if left <= 0 or self._thread is None or not self._thread.is_alive():
                    return not (self._waiting or self._writing)
                self._cond.wait(min(left, 0.05))
        return True

    def stop(self, timeout: float = 30.0) -> bool:
        """Write what is waiting, then stop the writer thread."""
        flushed = self.flush(timeout)
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)
        return flushed

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._stopping:
                    self._cond.wait()
                if not self._waiting:
                    return
            if self.linger_seconds:
                time.sleep(self.linger_seconds)
            with self._cond:
                batch, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
                self._writing = len(batch)
            try:
                self._write(batch)
            finally:
                with self._cond:
                    self._writing = 0
                    self._cond.notify_all()

    def _write(self, batch: list[Ticket]) -> None:
        """Write one batch, retrying while the database is away; settle every ticket."""
        failures = 0
        unwritable: set[str] = set()
        while True:
            try:
                written = self._write_once([ticket.job for ticket in batch])
            except _DB_DOWN as exc:
                if failures == 0:
                    self.logger.warning(
                        "Could not write %d job record(s) (%s); their messages stay "
                        "unacknowledged, trying again",
                        len(batch),
                        str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__,
                    )
                delay = RETRY_DELAYS[min(failures, len(RETRY_DELAYS) - 1)]
                failures += 1
                with self._cond:
                    if self._stopping:
                        # Shutting down: the messages stay unacknowledged and come back.
                        self.logger.warning(
                            "Stopping with %d job record(s) unwritten; RabbitMQ delivers "
                            "their messages again",
                            len(batch),
                        )
                        return
                time.sleep(delay)
                continue
            except Exception:
                # The database refused the batch itself (a value it cannot store):
                # one record at a time, so one bad record holds up no other.
                self.logger.exception("Could not write %d job record(s) together", len(batch))
                written, unwritable = self._write_alone(batch)
            break
        if failures:
            self.logger.info("Wrote the job records held back (%d)", len(batch))
        first: set[str] = set()
        outcomes: list[tuple[Ticket, bool]] = []
        for ticket in batch:
            # Two copies of one message in a batch: the statement wrote the first one.
            ok = ticket.job.message_id in written and ticket.job.message_id not in first
            first.add(ticket.job.message_id)
            outcomes.append((ticket, ok))
        left = [t.job for t, ok in outcomes if not ok and t.job.message_id not in unwritable]
        taken = {id(job) for job in self._keep_taken(left)}
        for ticket, ok in outcomes:
            if not ok and ticket.job.message_id not in unwritable and id(ticket.job) not in taken:
                self.duplicates += 1
                self.logger.info(
                    "%s %s already finished; its record was left as it was",
                    ticket.job.actor,
                    ticket.job.message_id,
                    extra={"message_id": ticket.job.message_id, "actor": ticket.job.actor},
                )
            self.written += ok
            ticket.settle(written=ok)

    def _keep_taken(self, left: list[JobRecord]) -> list[JobRecord]:
        """Dead-letter those of `left` whose id is another job's record; returns them.

        As the transactional path does (`MessageIdTaken`): that job's record was
        left alone by the statement; the intruder is kept as a dead letter under
        an id of its own, and its message is acknowledged.
        """
        if not left:
            return []
        try:
            with Session(self.engine) as session, session.begin():
                taken = jobs.taken_ids(session, left)
                for job in taken:
                    refused = MessageIdTaken(job.message_id)
                    error = describe_error(refused)
                    self.logger.warning(
                        "%s %s: %s",
                        job.actor,
                        job.message_id,
                        error,
                        extra={"message_id": job.message_id, "actor": job.actor},
                    )
                    record_dead_letter(
                        session,
                        message_id=str(uuid.uuid4()),
                        queue=job.queue,
                        reason=refused.reason,
                        error=error,
                        traceback=None,
                        attempts=job.attempts,
                        actor=job.actor,
                        tenant_id=job.tenant_id,
                        message=job.message.asdict() if job.message is not None else None,
                    )
        except Exception:
            self.logger.exception(
                "Could not check the owners of %d record(s) not written", len(left)
            )
            return []
        return taken

    def _write_once(self, batch: list[JobRecord]) -> set[str]:
        with self.engine.connect() as connection:
            written = jobs.finish_many(connection, batch)
            connection.commit()
        return written

    def _write_alone(self, batch: list[Ticket]) -> tuple[set[str], set[str]]:
        written: set[str] = set()
        unwritable: set[str] = set()
        for ticket in batch:
            try:
                written |= self._write_once([ticket.job])
            except Exception:
                unwritable.add(ticket.job.message_id)
                # Acknowledged all the same: the job ran and succeeded, and a message whose
                # record can never be written would otherwise come back for ever.
                self.logger.exception(
                    "Could not write the record of %s %s; its message is acknowledged without it",
                    ticket.job.actor,
                    ticket.job.message_id,
                )
        return written, unwritable
