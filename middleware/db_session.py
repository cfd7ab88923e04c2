"""One SQLAlchemy session per message: the actor's writes and its job record commit together."""

from __future__ import annotations

import datetime as dt
import logging
import traceback
import uuid
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar, cast

from dramatiq import Actor, Message, Worker
from dramatiq.broker import Broker, MessageProxy
from dramatiq.common import q_name
from dramatiq.middleware import Middleware, SkipMessage
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from db.models import JOB_FINAL_STATES, JOB_SKIPPED, TENANT_DELETING, TENANT_DISABLED
from middleware.context import MessageContext, current_context, enter_context, leave_context
from middleware.follow_ups import FollowUps
from middleware.group_commit import GroupCommit
from middleware.groups import GroupCompletion
from middleware.outbox import Outbox
from middleware.outbox_rows import job_record
from middleware.plain_actors import adopt, prefix_queue
from middleware.retry_policy import Decision, RetryPolicy, attempt_of, outcome_of
from middleware.tenant_routing import RouteRefused, TenantRouting
from middleware.worker_state import WorkerState
from services import jobs
from services.dead_letters import record_dead_letter
from services.errors import (
    AttemptsSpent,
    MessageIdTaken,
    PermanentError,
    TenantDisabled,
    UnknownTenant,
    WorkerCrashed,
    describe_error,
)
from services.groups import Member, record_member
from services.records import JobRecord
from services.results import keep_result
from transport.rabbitmq import Refusal

# Errors that must not be recorded as a job failure: the process is going away.
_PASS_THROUGH = (KeyboardInterrupt, SystemExit, GeneratorExit)
# Failures that concern the tenant, not the job: the actor's give-up hook is not run.
# A tenant mismatch names a tenant the message was not routed for: its hook would
# change that other tenant's rows (mark its ingest items failed, notify it).
# A refused route or a taken message id names rows that are not this message's.
_TENANT_ERRORS = (UnknownTenant, TenantDisabled, RouteRefused, MessageIdTaken)

M = TypeVar("M", bound=Middleware)


class _Finished(Exception):
    """The job's record is final already (a duplicate copy, a cancelled job): do not run it."""


# Set on an exception whose message the engine kept as a dead letter (the id kept under).
KEPT_AS_DEAD_LETTER = "taskyard_dead_letter_id"


OnGiveUp = Callable[[Session, dict[str, Any], str], None]


class DbSession(Middleware):
    """Opens a session per message and runs the actor inside its one transaction.

    Dramatiq swallows exceptions raised in after-hooks, so the commit cannot
    live in one: the project's actor class calls `run()`, which commits inside
    the actor call, where a failed commit is an ordinary exception that the
    retry policy sees.
    """

    # `schema`: marshmallow schema of the actor's keyword arguments.
    # `on_give_up`: called as (session, kwargs, error) when a job is dead-lettered.
    actor_options = {"schema", "on_give_up"}

    def __init__(
        self,
        *,
        session_factory: sessionmaker[Session],
        check_schema: Callable[[], None] | None = None,
        state: WorkerState | None = None,
        routing: TenantRouting | None = None,
        policy: RetryPolicy | None = None,
        outbox: Outbox | None = None,
        follow_ups: FollowUps | None = None,
        groups: GroupCompletion | None = None,
        group_commit_linger_seconds: float = 0.0,
    ) -> None:
        self.logger = logging.getLogger(type(self).__name__)
        self.session_factory = session_factory
        self.check_schema = check_schema
        self.state = state
        # The records of jobs that opened no transaction, written in groups.
        self.group = GroupCommit(
            session_factory.kw["bind"], linger_seconds=group_commit_linger_seconds
        )
        # The parts of the engine this one uses, handed over when it is built.
        self.routing = routing
        self.policy = policy
        self.outbox = outbox
        # Callbacks and pipeline stages, held in the job's transaction.
        self.follow_ups = follow_ups
        # Groups with completion callbacks: members recorded here, groups completed after.
        self.groups = groups

    def before_declare_actor(self, broker: Broker, actor: Actor[Any, Any]) -> None:
        """A plain `@dramatiq.actor`'s queue goes under the queue prefix, as Taskyard's do."""
        if self.routing is not None:
            prefix_queue(actor, self.routing.queue_prefix)

    def after_declare_actor(self, broker: Broker, actor: Actor[Any, Any]) -> None:
        """A plain `@dramatiq.actor` declared on this broker runs through the engine too."""
        adopt(actor, self)

    def before_consumer_thread_shutdown(self, broker: Broker, thread: Any) -> None:
        """Write the records still waiting for the group commit, so their messages are acked."""
        if not self.group.flush():
            self.logger.warning("Stopping with job records unwritten; RabbitMQ redelivers them")

    def after_worker_shutdown(self, broker: Broker, worker: Worker) -> None:
        """Stop the group commit's writer."""
        self.group.stop()

    def before_worker_boot(self, broker: Broker, worker: Worker) -> None:
        """Refuse to start against a database whose migrations are behind; then warm the pool."""
        if self.check_schema is not None:
            try:
                self.check_schema()
            except Exception as exc:
                self.logger.critical("Worker not started: %s", exc)
                raise SystemExit(2) from exc
        self.warm_up(worker.worker_threads)

    def warm_up(self, count: int) -> int:
        """Open `count` pooled connections and run a job record's statements on each, rolled back.

        A new PostgreSQL connection costs its first jobs a connect and the new
        backend's first look at the tables; left to the first jobs, every
        thread pays that at once and a fresh worker's first jobs wait for it
        (the latency scenario of `python -m bench`).  Done before the consumers start, nothing
        waits for it but the boot.  Returns how many connections were warmed;
        a failure is logged, not fatal: the jobs would open their own.
        """
        engine = self.session_factory.kw["bind"]
        if engine.dialect.name != "postgresql":
            return 0
        # More than the pool keeps would be closed again on return.
        count = min(count, engine.pool.size())
        sessions: list[Session] = []
        try:
            for _ in range(count):
                session = self.session_factory()
                sessions.append(session)
                jobs.rehearse(session)
        except Exception as exc:
            self.logger.warning("Could not warm the database pool: %s", describe_error(exc))
            return 0
        finally:
            for session in sessions:
                session.rollback()
                session.close()
        return count

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        """Make the message current on this thread: its context, until it is done.

        The one place the running message is kept (a ContextVar, see
        middleware.context): the actor class, `current_message()` and
        `current_session()` all read it.  Its session opens only when asked for.
        """
        # The proxy stands for its message (it forwards every attribute).
        ctx = MessageContext(
            message=cast(Message[Any], message), session_factory=self.session_factory
        )
        ctx.token = enter_context(ctx)

    def after_process_message(
        self,
        broker: Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        """Close the message's context (and its session, if one was opened)."""
        self._leave(message)

    def after_skip_message(self, broker: Broker, message: MessageProxy) -> None:
        """Mark a message skipped before it ran (a stale tick) and close its context."""
        self._leave(message)
        # A record already final is left alone: that is the "already finished" skip.
        try:
            with self.session_factory.begin() as session:
                jobs.mark_not_run(
                    session,
                    message.message_id,
                    actor=message.actor_name,
                    queue=q_name(message.queue_name),
                    status=JOB_SKIPPED,
                    error="skipped before it ran",
                )
        except Exception:
            self.logger.warning("Could not mark %s skipped", message.message_id, exc_info=True)

    @staticmethod
    def _leave(message: MessageProxy) -> None:
        ctx = current_context()
        if ctx is None or ctx.message is not cast(Message[Any], message) or ctx.token is None:
            return  # skipped before this middleware's before-hook made it current
        ctx.close()
        leave_context(ctx.token)

    @staticmethod
    def incoming() -> Message[Any] | None:
        """The message this worker thread is running, if any."""
        ctx = current_context()
        return ctx.message if ctx is not None else None

    def refusal(self, broker: Broker, message: Message[Any]) -> Refusal | None:
        """Why `message` may not run where it arrived, or its follow-ups go where they say.

        The check the consumer makes before a body becomes a job, and the
        engine again before the job runs (any broker): the route (tenant
        routing), then the callbacks and pipeline stages (`follow_up_refusal`).
        """
        actor = broker.actors.get(message.actor_name)
        refused = self.routing.refusal(actor, message) if self.routing is not None else None
        if refused is None and actor is not None and self.follow_ups is not None:
            refused = self.follow_ups.refusal(broker, actor, message)
        return refused

    def run(self, broker: Broker, message: Message[Any], call: Callable[[], Any]) -> Any:
        """Run `call` for `message` and write its record (one statement, after the body).

        Returns what `call` returned (the record keeps it in its JSON form).

        Nothing is written before the body: the record's final state is the
        job's one statement.  A job that used its session (or sent messages)
        writes it at the end of its own transaction, which it then commits;
        a job that did neither hands it to the group commit, and its message
        is acknowledged once that commit is durable.  A failure rolls the
        transaction back and is recorded in a transaction of its own.
        Returns what the actor returned; the record keeps it as `keep_result` says.
        """
        broker.get_actor(message.actor_name)  # an unknown actor raises ActorNotFound
        # Checked again here (the consumer checked it for RabbitMQ): any broker, before
        # the record is touched or any of the actor's code runs.
        refused = self.refusal(broker, message)
        policy = self.policy
        # A refused message is credited to no tenant: it is not the named one's job.
        record = job_record(broker, message, credited=refused is None)
        record.attempts = attempt_of(message)
        ctx = current_context()
        # Outside the worker's hooks (a test calling run), the context is made here.
        token = None
        if ctx is None or ctx.message is not message:
            ctx = MessageContext(message=message, session_factory=self.session_factory)
            token = enter_context(ctx)
        # Sends from here on are held for the job's transaction (and its failure's).
        ctx.holding = True
        try:
            try:
                if refused is not None:
                    raise RouteRefused(refused)
                allowed = policy.attempts_allowed(broker, message) if policy else None
                if allowed is not None and record.attempts > allowed:
                    raise AttemptsSpent(allowed)
                redelivered = getattr(message, "redelivered", False)
                if (
                    allowed is not None
                    and redelivered
                    and self._check_crashes(message, record, allowed)
                ):
                    raise _Finished()
                # Whether the process's state vouches for the tenant; if not, the record
                # is written in a transaction of the job's own, which checks it.
                vouched = self._check_state(message, record)
                record.started_at = dt.datetime.now(dt.UTC)
                returned = call()
                record.result, record.result_dropped = keep_result(returned, self.logger)
                if self.follow_ups is not None:
                    # The callback and the next stage are written with the record's statement.
                    self.follow_ups.hold_after_success(
                        broker, ctx, message, returned, record.tenant_id
                    )
                member = (
                    self.groups.member(broker, message, record.tenant_id, dead=False)
                    if self.groups is not None
                    else None
                )
                record.finished_at = dt.datetime.now(dt.UTC)
                if ctx.opened or ctx.held or ctx.after_commit or member or not vouched:
                    self._commit(broker, ctx, record, member)
                else:
                    self._group_commit(message, record)
            except _Finished:
                self._skip_finished(message)
            except _PASS_THROUGH:
                raise
            except BaseException as exc:
                ctx.held.clear()
                ctx.after_commit.clear()
                if ctx.opened:
                    ctx.session.rollback()
                if self._record_failure(broker, message, ctx.session, record, exc):
                    self._skip_finished(message)
                raise
            return returned
        finally:
            ctx.holding = False
            ctx.close()
            if token is not None:
                leave_context(token)

    def _skip_finished(self, message: Message[Any]) -> NoReturn:
        """Skip a copy whose job is final already: acknowledged, nothing run or recorded."""
        self.logger.info(
            "%s %s already finished; skipped",
            message.actor_name,
            message.message_id,
            extra={"message_id": message.message_id, "actor": message.actor_name},
        )
        raise SkipMessage("job already finished") from None

    def _commit(
        self,
        broker: Broker,
        ctx: MessageContext,
        finished: JobRecord,
        member: Member | None = None,
    ) -> None:
        """Write held sends and the record's final statement in the job's transaction; commit.

        A member of a group is recorded in the same transaction; once it has
        committed, its group is completed if it was the last (`after_commit`).
        """
        session = ctx.session
        if member is not None and self.groups is not None:
            record_member(session, member)
            ctx.after_commit.append(self.groups.completer(broker, member))
        pending = self.write_held(session, ctx)
        done = jobs.finish(session, finished)
        if not done.written:
            # A copy finished first (or the job was cancelled): this copy's writes never commit.
            session.rollback()
            jobs.check_owner(session, finished)
            raise _Finished()
        if finished.tenant_id is not None:
            # Authoritative: the tenant's status read in the same statement.
            _require_active_tenant(finished.tenant_id, done.tenant_status)
        session.commit()
        self.publish(broker, pending)
        self.run_after_commit(broker, ctx)

    def run_after_commit(self, broker: Broker, ctx: MessageContext) -> None:
        """Run the work held for after the job's commit, each in a transaction of its own."""
        work, ctx.after_commit = ctx.after_commit, []
        for item in work:
            try:
                item()
            except Exception as exc:
                self.logger.warning(
                    "Work after the commit of %s failed (%s); a sweeper completes it",
                    ctx.message.message_id if ctx.message is not None else "a transaction",
                    describe_error(exc),
                )

    def write_held(self, session: Session, ctx: MessageContext) -> list[JobRecord]:
        """Write the transaction's held sends (records and outbox rows), just before it commits."""
        held, ctx.held = ctx.held, []
        return self.outbox.write_held(session, held) if self.outbox is not None else []

    def publish(self, broker: Broker, pending: list[JobRecord]) -> None:
        """Hand what a committed transaction held to the publisher."""
        if pending and self.outbox is not None:
            self.outbox.publish(broker, pending)

    def _group_commit(self, message: Message[Any], finished: JobRecord) -> None:
        """Hand the record to the group commit; the message is acknowledged once it is durable."""
        ticket = self.group.submit(finished)
        if getattr(message, "defers_ack", False):
            # The consumer acknowledges it when the ticket settles.
            message.record_ticket = ticket  # type: ignore[attr-defined]
        else:
            # A broker that acknowledges at once (the in-process one): wait for the commit.
            ticket.wait()
            if not ticket.written:
                raise _Finished()

    def _check_state(self, message: Message[Any], record: JobRecord) -> bool:
        """Refuse, before its body, a job whose tenant is stopped or that was cancelled.

        From the process's state (refreshed every second), not from the
        database: the final statement checks the record again.  True when
        the state vouches for the job's tenant (active at the last poll, or
        no tenant): only then may its record join the group commit, whose
        statement does not check the tenant.
        """
        state = self.state
        if state is None:
            return False
        if state.cancel_requested(message.message_id):
            raise _Finished()
        tenant_id = record.tenant_id
        if tenant_id is None:
            return True
        status = state.tenant_status(tenant_id)
        if status is None:
            return False  # not known yet: the job's own transaction checks it
        _require_active_tenant(tenant_id, status)
        return True

    def _check_crashes(self, message: Message[Any], record: JobRecord, allowed: int) -> bool:
        """Count this start of a redelivered copy; True when its job is final already.

        RabbitMQ redelivers what a worker held when it died, so a message whose
        processing kills its process (the OOM killer, a segfault) would come
        back for ever.  Each redelivered start is counted, committed before the
        actor runs; with the failed attempts before it, they may not exceed the
        actor's attempts (as Sidekiq Pro's super_fetch counts poison pills).
        A copy only prefetched by the dead worker is counted too, once.
        A redelivered copy also reads its record first: the worker that died
        may have committed it, and then this copy does not run at all.
        """
        with self.session_factory.kw["bind"].connect() as connection:
            crashes = jobs.count_redelivery(
                connection,
                message.message_id,
                actor=record.actor,
                queue=record.queue,
                tenant_id=record.tenant_id,
            )
            if crashes is None and jobs.record_status(connection, message.message_id) in (
                JOB_FINAL_STATES
            ):
                # Final, and this job's: the copy is a duplicate. Another job's: refused.
                jobs.check_owner(connection, record)
                return True
        if crashes is not None and record.attempts - 1 + crashes >= allowed:
            raise WorkerCrashed(crashes)
        return False

    def _record_failure(
        self,
        broker: Broker,
        message: Message[Any],
        session: Session,
        record: JobRecord,
        exc: BaseException,
    ) -> bool:
        """Record the failure (and the dead letter, when no attempt follows) and act on it.

        True when the job's record is final already: the copy that failed
        comes after a commit that went through although its worker saw it
        fail (the database went down as it committed).  Nothing is recorded
        then, no dead letter contradicts the record, and the copy is skipped.
        """
        dead_letter_id = message.message_id
        if isinstance(exc, AttemptsSpent):
            # The deliveries after the last attempt only came back to be recorded.
            record.attempts = exc.attempts
        if isinstance(exc, MessageIdTaken):
            # The id is another job's: its record is left alone (the guarded upsert below
            # changes nothing) and this message's dead letter gets an id of its own.
            dead_letter_id = str(uuid.uuid4())
        policy = self.policy
        decision = (
            policy.decide(broker, message, exc)
            if policy is not None
            else Decision(retry=False, delay_ms=0, reason="failed")
        )
        outcome = outcome_of(decision, record.attempts)
        error = f"{describe_error(exc)} {outcome}" if outcome else describe_error(exc)
        pending: list[JobRecord] = []
        try:
            with session.begin():
                written = jobs.record_failure(
                    session,
                    record,
                    error=error,
                    dead=not decision.retry,
                    error_class=type(exc).__name__,
                    message=str(exc).strip() or "(no message)",
                    traceback="".join(traceback.format_exception(exc)),
                )
                if (
                    not written
                    and not isinstance(exc, _TENANT_ERRORS)
                    and not jobs.taken_ids(session, [record])
                ):
                    # Final already, and this job's (a refused message is always kept).
                    raise _Finished()  # rolled back
                if not decision.retry:
                    record_dead_letter(
                        session,
                        message_id=dead_letter_id,
                        queue=record.queue,
                        reason=decision.reason,
                        error=error,
                        traceback="".join(traceback.format_exception(exc)),
                        attempts=record.attempts,
                        actor=record.actor,
                        tenant_id=record.tenant_id,
                        message=message.asdict(),
                    )
                on_give_up: OnGiveUp | None = broker.get_actor(message.actor_name).options.get(
                    "on_give_up"
                )
                gave_up = not decision.retry and not isinstance(exc, _TENANT_ERRORS)
                if gave_up and on_give_up:
                    on_give_up(session, dict(message.kwargs), error)
                ctx = current_context()
                if gave_up and ctx is not None:
                    self._hold_on_failure(broker, ctx, message, record, exc)
                    member = (
                        self.groups.member(broker, message, record.tenant_id, dead=True)
                        if self.groups is not None
                        else None
                    )
                    if member is not None and self.groups is not None:
                        # A dead member finishes its group too (which then sends no callback).
                        record_member(session, member)
                        ctx.after_commit.append(self.groups.completer(broker, member))
                    # What the hook sent (a failure notification) and the on_failure callback
                    # are written in this transaction and published once it commits.
                    pending = self.write_held(session, ctx)
        except _Finished:
            return True
        except (OperationalError, InterfaceError) as db_error:
            # The database is away: never let the message vanish into RabbitMQ's
            # expiring dead-letter queue; try it again once the record can be written,
            # with a growing backoff (and no run of its actor past its attempts).
            decision = policy.unrecorded(broker, message) if policy is not None else decision
            self.logger.warning(
                "Could not record the failure of %s %s (%s); retrying in %.1f s",
                message.actor_name,
                message.message_id,
                describe_error(db_error).splitlines()[0][:300],
                decision.delay_ms / 1000,
                extra={"message_id": message.message_id, "actor": message.actor_name},
            )
        except Exception:
            # The database refused the record itself (bad data): retrying would
            # loop for ever; the decision stands and DeadLetters keeps what it can.
            self.logger.exception(
                "Could not record the failure of %s %s", message.actor_name, message.message_id
            )
        else:
            if not decision.retry:
                # DeadLetters.before_nack keeps only what no one kept before it.
                setattr(exc, KEPT_AS_DEAD_LETTER, dead_letter_id)
            self.publish(broker, pending)
            ctx = current_context()
            if ctx is not None:
                self.run_after_commit(broker, ctx)
        # The decision, as recorded, carried out here: the retry re-enqueued, or the
        # message failed (the worker nacks it).
        if policy is not None and isinstance(message, MessageProxy):
            policy.act(broker, message, exc, decision)
        return False

    def _hold_on_failure(
        self,
        broker: Broker,
        ctx: MessageContext,
        message: Message[Any],
        record: JobRecord,
        exc: BaseException,
    ) -> None:
        """Hold the on_failure callback; one that cannot be built is logged, the death recorded."""
        if self.follow_ups is None:
            return
        try:
            self.follow_ups.hold_after_failure(broker, ctx, message, exc, record.tenant_id)
        except PermanentError as problem:
            self.logger.error(
                "The on_failure callback of %s %s is not sent: %s",
                message.actor_name,
                message.message_id,
                describe_error(problem),
                extra={"message_id": message.message_id, "actor": message.actor_name},
            )


def find_middleware(broker: Broker, kind: type[M]) -> M | None:
    for middleware in broker.middleware:
        if isinstance(middleware, kind):
            return middleware
    return None


def _require_active_tenant(tenant_id: int, status: str | None) -> None:
    """Refuse a job whose tenant (its status read with the job record) is gone or stopped."""
    if status is None:
        raise UnknownTenant(tenant_id)
    # A tenant being deleted runs nothing new either.
    if status in (TENANT_DISABLED, TENANT_DELETING):
        raise TenantDisabled(tenant_id)
