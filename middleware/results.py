"""Dramatiq's result backend, read from the job record: `message.get_result()` with PostgreSQL only.

The engine keeps every job's result on its record, in the job's own
transaction (`services.results.keep_result`); `TaskyardResults` stores
nothing of its own.  `JobResults` reads the record by message id: the value
of a succeeded job, `ResultFailure` (with the recorded error) for a dead,
expired or cancelled one, `ResultNotKept` for a result too large or not
JSON, `ResultMissing` while the job is not over.  A producer needs only the
database: `JobResults.from_settings(load_settings())`, or the broker's own
(`broker.get_results_backend()`).

Waiting (`block=True`) polls the record by its primary key with a growing
back-off, not LISTEN/NOTIFY: a notification would add work to every job's
final statement and a lock to every commit that sends one, to spare only the
waiting callers' cheap reads.
"""

from __future__ import annotations

import time
from typing import Any

import dramatiq
from dramatiq.broker import Broker, MessageProxy
from dramatiq.common import q_name
from dramatiq.results import ResultBackend, ResultMissing, Results, ResultTimeout
from dramatiq.results.backend import DEFAULT_TIMEOUT
from sqlalchemy import Engine

from middleware.actor_options import check_actor_options
from services.results import Outcome, read_outcome
from settings import Settings

# The options Dramatiq code sets for its result backend; accepted, with no effect here.
RESULT_OPTIONS = ("store_results", "result_ttl")
# A blocking read polls at once, then after this wait, doubled each time up to the cap.
FIRST_POLL_MS = 10
MAX_POLL_MS = 250


class JobResults(ResultBackend):
    """A Dramatiq result backend that reads each message's job record; it stores nothing."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(namespace="taskyard")
        self.engine = engine

    @classmethod
    def from_settings(cls, settings: Settings) -> JobResults:
        """A backend of its own for a process that only reads results (a web app, a script)."""
        from db.session import make_engine

        return cls(make_engine(settings))

    def get_result(
        self, message: dramatiq.Message[Any], *, block: bool = False, timeout: int | None = None
    ) -> Any:
        """The result of `message`'s job, read from its record.

        `ResultMissing` while the job is not over (queued, retrying, no
        record yet, or its record already purged); with `block=True`, waits
        up to `timeout` ms (10 s by default), then `ResultTimeout`.
        """
        deadline = time.monotonic() + (DEFAULT_TIMEOUT if timeout is None else timeout) / 1000
        wait_ms = FIRST_POLL_MS
        while True:
            outcome = self._read(message)
            if outcome is not None and outcome.final:
                return outcome.value()
            if not block:
                raise ResultMissing(message)  # type: ignore[no-untyped-call]
            left = deadline - time.monotonic()
            if left <= 0:
                raise ResultTimeout(message)  # type: ignore[no-untyped-call]
            # Once more at the deadline at the latest, rather than giving up before it.
            time.sleep(min(wait_ms / 1000, left))
            wait_ms = min(wait_ms * 2, MAX_POLL_MS)

    def _read(self, message: dramatiq.Message[Any]) -> Outcome | None:
        if "\x00" in message.message_id:
            # PostgreSQL text cannot hold it, so no record can have this id.
            raise ResultMissing(  # type: ignore[no-untyped-call]
                f"message id {message.message_id!r} has a NUL character: no job has it"
            )
        with self.engine.connect() as connection:
            outcome = read_outcome(connection, message.message_id)
        if outcome is None:
            return None
        if outcome.actor != message.actor_name or outcome.queue != q_name(message.queue_name):
            # The id is another job's record (a message that reused it was refused): never
            # that job's result; this message has no record of its own.
            raise ResultMissing(  # type: ignore[no-untyped-call]
                f"message id {message.message_id} is the record of another job "
                f"({outcome.actor} on {outcome.queue}), not of this {message.actor_name} "
                f"message on {q_name(message.queue_name)}"
            )
        return outcome

    def _store(self, message_key: str, result: Any, ttl: int) -> None:
        raise NotImplementedError(
            "Taskyard's result backend stores nothing: the engine keeps each job's result on "
            "its record, in the job's own transaction"
        )


class TaskyardResults(Results):
    """Dramatiq's `Results` middleware over `JobResults`; its hooks store nothing.

    `store_results` and `result_ttl` are accepted (Dramatiq code sets them)
    and change nothing: every job's result is kept with its record, for the
    record's retention (`TASKYARD_JOB_RETENTION_DAYS`).
    """

    def __init__(self, *, backend: JobResults, retention_days: int) -> None:
        super().__init__(backend=backend)  # type: ignore[no-untyped-call]
        self.retention_days = retention_days

    def before_declare_actor(self, broker: Broker, actor: dramatiq.Actor[Any, Any]) -> None:
        """Refuse a value of the options no message could carry; say when a ttl outlives records."""
        check_actor_options(actor.actor_name, actor.options, RESULT_OPTIONS)
        ttl = actor.options.get("result_ttl")
        if isinstance(ttl, int) and ttl > self.retention_days * 86_400_000:
            self.logger.warning(
                "Actor %s: result_ttl=%d ms is longer than the job records are kept "
                "(TASKYARD_JOB_RETENTION_DAYS=%d); its results go with its records",
                actor.actor_name,
                ttl,
                self.retention_days,
            )

    def after_process_message(
        self,
        broker: Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        """Nothing: the engine wrote the result with the job's record."""

    def after_skip_message(self, broker: Broker, message: MessageProxy) -> None:
        """Nothing: a skipped job's record says so."""

    def after_nack(self, broker: Broker, message: MessageProxy) -> None:
        """Nothing: a failed job's record holds its error."""


def added_results(broker: Broker) -> Results | None:
    """A `Results` middleware added to the broker besides Taskyard's (None: none was)."""
    for middleware in broker.middleware:
        if isinstance(middleware, Results) and not isinstance(middleware, TaskyardResults):
            return middleware
    return None


def results_backend_of(broker: Broker) -> ResultBackend:
    """The backend `get_result()` uses: one added to the broker by hand, else the job records.

    Dramatiq takes the first `Results` middleware's; Taskyard's comes first on
    its broker, so a `Results(backend=...)` added to it would otherwise never
    be read.
    """
    added = added_results(broker)
    if added is not None:
        backend: ResultBackend = added.backend
        return backend
    for middleware in broker.middleware:
        if isinstance(middleware, TaskyardResults):
            found: ResultBackend = middleware.backend
            return found
    raise RuntimeError("The broker doesn't have a results backend.")
