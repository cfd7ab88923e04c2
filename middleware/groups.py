"""Dramatiq's groups with completion callbacks, tracked in PostgreSQL (no Redis).

`group.run()` looks for a `GroupCallbacks` middleware and creates a barrier of
the group's size with its backend: Taskyard's (`GroupCompletion`) writes the
group's row there (`services.groups`).  Its own after-hook does nothing: the
engine (`DbSession.run`) records each member that finishes in the member's
own transaction, then, once that has committed, completes the group when it
is the last: the completion is claimed once, in the transaction that writes
the callbacks through the outbox, so they are sent exactly once.  The
outbox's sweeper thread completes the groups a crash left unclaimed.

A group completes when every member has finished.  When every member
succeeded, its callbacks are sent (as in Dramatiq); when one died, the
group is recorded `failed` and no callback is sent.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from dramatiq import Message
from dramatiq.broker import Broker, MessageProxy
from dramatiq.middleware import GroupCallbacks
from dramatiq.rate_limits import RateLimiterBackend
from sqlalchemy import Engine

from middleware.context import MessageContext
from middleware.follow_ups import (
    GROUP_CALLBACKS_OPTION,
    GROUP_OPTION,
    FollowUps,
    world_of,
)
from middleware.outbox import Outbox
from services import groups
from services.errors import PermanentError, describe_error

logger = logging.getLogger("GroupCompletion")

# How long the member's own worker has to complete its group before a sweeper does.
STALLED_AFTER_SECONDS = 30.0
# The sweeper looks for stalled groups this often (every worker process).
SWEEP_EVERY_SECONDS = 30.0
# How far back a worker's first look goes; later looks overlap the previous one.
FIRST_LOOK_BACK = dt.timedelta(days=1)
LOOK_OVERLAP = dt.timedelta(minutes=5)


class GroupBackend(RateLimiterBackend):
    """The "barrier" `group.run()` creates: the group's row in PostgreSQL, with its size.

    Only `add` (what `Barrier.create` calls) is kept: the members are counted by
    the engine, in their own transactions.  It is no rate limiter.
    """

    def __init__(self, engine: Engine) -> None:
        # An autocommit engine: the group is durable before its members are sent.
        self.engine = engine

    def add(self, key: str, value: int, ttl: int) -> bool:
        """Record the group `key` of `value` members; False when it exists already."""
        if not isinstance(key, str) or not 0 < len(key) <= groups.MAX_GROUP_ID_CHARS:
            raise ValueError(f"a group's id must be 1 to {groups.MAX_GROUP_ID_CHARS} characters")
        with self.engine.connect() as connection:
            created = groups.create_group(connection, key, int(value))
            connection.commit()
        return created

    def _refuse(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(
            "Taskyard's group backend only records groups; a rate limiter needs a backend "
            "of its own (dramatiq.rate_limits.backends)"
        )

    incr = decr = incr_and_sum = wait = wait_notify = _refuse


class GroupCompletion(GroupCallbacks):
    """Taskyard's GroupCallbacks: groups are created in PostgreSQL and completed by the engine."""

    # The one GroupCallbacks a Taskyard broker keeps (see middleware.runtime).
    taskyard_groups = True

    def __init__(self, *, outbox: Outbox, follow_ups: FollowUps) -> None:
        super().__init__(GroupBackend(outbox.sends))
        self.outbox = outbox
        self.follow_ups = follow_ups
        self._swept_at = float("-inf")
        # The members recorded before this were looked at by this process's last sweep.
        self._looked_until: dt.datetime | None = None
        # Completers of other group-like work (an ingest's items) the sweeper also runs.
        self.stalled_work: list[Callable[[Broker], int]] = []
        outbox.also.append(self.sweep_now_and_then)

    def after_process_message(
        self,
        broker: Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        """Nothing: the engine records members and completes groups (see the module)."""

    def member(
        self, broker: Broker, message: Message[Any], tenant_id: int | None, *, dead: bool
    ) -> groups.Member | None:
        """`message` as a finished member of its group, or None when it is in none.

        Its world is its job's: the tenant credited by its route, never one named
        only in its options.  Its options passed `follow_up_refusal` before it ran.
        """
        group_id = message.options.get(GROUP_OPTION)
        callbacks = message.options.get(GROUP_CALLBACKS_OPTION)
        if not (group_id and callbacks and isinstance(group_id, str)):
            return None
        if not isinstance(callbacks, list) or len(group_id) > groups.MAX_GROUP_ID_CHARS:
            return None
        actor = broker.actors.get(message.actor_name)
        if actor is None:
            return None
        kind, _ = world_of(actor, message.kwargs)
        if kind == "tenant" and tenant_id is None:
            return None  # a refused route: not the named tenant's member
        return groups.Member(
            group_id=group_id,
            world=groups.world_key(kind, tenant_id),
            tenant_id=tenant_id if kind == "tenant" else None,
            message_id=message.message_id,
            dead=dead,
            callbacks=callbacks,
        )

    def completer(self, broker: Broker, member: groups.Member) -> Callable[[], object]:
        """The work, run after the member's commit, that completes its group if it is the last.

        One read first, outside any transaction: only a group found done opens
        the transaction that claims it.
        """

        def complete() -> None:
            with self.outbox.sends.connect() as connection:
                found = groups.progress(connection, member.group_id, member.world)
            if found is not None and found.done:
                self.outbox.follow_on(broker, partial(self.complete, broker, member=member))

        return complete

    def complete(self, broker: Broker, ctx: MessageContext, *, member: groups.Member) -> bool:
        """Complete `member`'s group in `ctx`'s transaction if all its members have finished.

        The claim is a unique insert: of two last members finishing at once,
        one gets it and holds the callbacks; the other's insert waits for that
        commit and claims nothing.  True when this call completed the group.
        """
        session = ctx.session
        found = groups.progress(session, member.group_id, member.world)
        if found is None or not found.done:
            return False
        outcome = groups.GROUP_FAILED if found.dead else groups.GROUP_SUCCEEDED
        claimed = groups.claim_completion(
            session,
            member.group_id,
            member.world,
            tenant_id=member.tenant_id,
            outcome=outcome,
            message_id=member.message_id,
        )
        if not claimed:
            return False
        if outcome == groups.GROUP_FAILED:
            logger.warning(
                "Group %s (%s) completed with %d of %d members dead; its callbacks are not sent",
                member.group_id,
                member.world,
                found.dead,
                found.size,
            )
            return True
        sender = f"group {member.group_id}"
        for data in member.callbacks:
            try:
                for callback, delay in self.follow_ups.group_callbacks(broker, [data], sender):
                    self.outbox.hold(broker, ctx, callback, delay)
            except PermanentError as exc:
                logger.error(
                    "A completion callback of group %s is not sent: %s",
                    member.group_id,
                    describe_error(exc),
                )
        return True

    def _complete_stalled(
        self, broker: Broker, group_id: str, world: str, done: list[bool], ctx: MessageContext
    ) -> None:
        member = groups.last_member(ctx.session, group_id, world)
        if member is not None:
            done.append(self.complete(broker, ctx, member=member))

    def sweep_now_and_then(self, broker: Broker) -> None:
        """`sweep`, at most every SWEEP_EVERY_SECONDS (called by the outbox's sweeper thread)."""
        now = time.monotonic()
        if now - self._swept_at < SWEEP_EVERY_SECONDS:
            return
        self._swept_at = now
        self.sweep(broker)

    def sweep(self, broker: Broker, *, stalled_after: float = STALLED_AFTER_SECONDS) -> int:
        """Complete the groups whose members all finished but whose completion was never claimed.

        A crash between a member's commit and its check leaves one; so does
        the database being away then.  Returns how many were completed.
        """
        now = dt.datetime.now(dt.UTC)
        older_than = now - dt.timedelta(seconds=stalled_after)
        looked = self._looked_until
        since = looked - LOOK_OVERLAP if looked is not None else now - FIRST_LOOK_BACK
        with self.outbox.sends.connect() as connection:
            pending = groups.stalled(connection, since=since, older_than=older_than, limit=100)
        if len(pending) < 100:
            self._looked_until = older_than
        completed = 0
        for group_id, world in pending:
            done: list[bool] = []
            work = partial(self._complete_stalled, broker, group_id, world, done)
            if self.outbox.follow_on(broker, work) and any(done):
                completed += 1
        for stalled_work in self.stalled_work:
            completed += stalled_work(broker)
        if completed:
            logger.info("Completed %d stalled group(s)", completed)
        return completed
