"""Groups with completion callbacks, tracked in PostgreSQL: sizes, finished members, completions.

A group's row (`job_groups`) is written when `group.run()` creates it, with
its size.  Each member that finishes writes its own row in its own
transaction (`record_member`), so no row is shared by the members and none
waits for another's lock.  After that commit one query counts the finished
members (`progress`); the group's completion is then claimed once, by a
unique insert (`claim_completion`), in the transaction that writes the
callbacks through the outbox.  `stalled` finds the groups whose members are
all done but whose completion was never claimed (a crash between a member's
commit and the check).

Members are counted per world (`tenant:<id>`, `system` or `dramatiq`): a
message of another tenant that names a group's id counts in a group of its
own world, and its completion (if ever) sends only its own world's callbacks.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, NamedTuple

from sqlalchemy import delete, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, aliased

from db.hot import Executor, connection_of
from db.models import JobGroup, JobGroupCompletion, JobGroupMember

# A group's id is Dramatiq's uuid; longer ids are refused before they reach the table.
MAX_GROUP_ID_CHARS = 64
GROUP_SUCCEEDED = "succeeded"
GROUP_FAILED = "failed"


def world_key(kind: str, tenant_id: Any) -> str:
    """The world a member counts in: `tenant:<id>`, `system` or `dramatiq`."""
    return f"tenant:{tenant_id}" if kind == "tenant" else kind


@dataclass(frozen=True)
class Member:
    """A finished member of a group, as its job's transaction records it."""

    group_id: str
    world: str
    tenant_id: int | None
    message_id: str
    dead: bool
    callbacks: list[dict[str, Any]]


class Progress(NamedTuple):
    """A group's size and how many of its members in one world have finished."""

    size: int
    finished: int
    dead: int

    @property
    def done(self) -> bool:
        """Whether every member has finished."""
        return self.finished >= self.size


def _insert(executor: Executor, model: type[Any]) -> Any:
    dialect = connection_of(executor).dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(model)


def create_group(executor: Executor, group_id: str, size: int) -> bool:
    """Record a group of `size` members; False when a group of that id exists already."""
    stmt = (
        _insert(executor, JobGroup)
        .values(id=group_id, size=size)
        .on_conflict_do_nothing(index_elements=[JobGroup.id])
        .returning(JobGroup.id)
    )
    return executor.execute(stmt).first() is not None


def record_member(session: Session, member: Member) -> None:
    """Record a finished member in its job's transaction (once: a second copy changes nothing)."""
    stmt = (
        _insert(session, JobGroupMember)
        .values(
            group_id=member.group_id,
            world=member.world,
            tenant_id=member.tenant_id,
            message_id=member.message_id,
            dead=member.dead,
            callbacks=member.callbacks,
            # When it is written, not when its transaction began (a long job's began long
            # before): the sweeper looks at the members recorded since its last look.
            created_at=_clock(session),
        )
        .on_conflict_do_nothing(
            index_elements=[
                JobGroupMember.group_id,
                JobGroupMember.world,
                JobGroupMember.message_id,
            ]
        )
    )
    session.execute(stmt)


def _clock(executor: Executor) -> Any:
    if connection_of(executor).dialect.name == "postgresql":
        return func.clock_timestamp()
    return func.current_timestamp()


def progress(executor: Executor, group_id: str, world: str) -> Progress | None:
    """The group's size and its finished (and dead) members in `world`; None: no such group."""
    members = select(JobGroupMember.id).where(
        JobGroupMember.group_id == group_id, JobGroupMember.world == world
    )
    finished = select(func.count()).select_from(members.subquery()).scalar_subquery()
    dead = (
        select(func.count())
        .select_from(members.where(JobGroupMember.dead).subquery())
        .scalar_subquery()
    )
    row = executor.execute(
        select(JobGroup.size, finished, dead).where(JobGroup.id == group_id)
    ).first()
    if row is None:
        return None
    size, done, died = tuple(row)
    return Progress(size=int(size), finished=int(done), dead=int(died))


def claim_completion(
    session: Session,
    group_id: str,
    world: str,
    *,
    tenant_id: int | None,
    outcome: str,
    message_id: str | None,
) -> bool:
    """Claim the group's completion in `world`: True for the one transaction that gets it."""
    stmt = (
        _insert(session, JobGroupCompletion)
        .values(
            group_id=group_id,
            world=world,
            tenant_id=tenant_id,
            outcome=outcome,
            message_id=message_id,
        )
        .on_conflict_do_nothing(
            index_elements=[JobGroupCompletion.group_id, JobGroupCompletion.world]
        )
        .returning(JobGroupCompletion.id)
    )
    return session.execute(stmt).first() is not None


def last_member(executor: Executor, group_id: str, world: str) -> Member | None:
    """The member of the group in `world` recorded last (its callbacks complete the group)."""
    row = executor.execute(
        select(JobGroupMember)
        .where(JobGroupMember.group_id == group_id, JobGroupMember.world == world)
        .order_by(JobGroupMember.id.desc())
        .limit(1)
    ).scalar_one_or_none()
    if row is None:
        return None
    return Member(
        group_id=row.group_id,
        world=row.world,
        tenant_id=row.tenant_id,
        message_id=row.message_id,
        dead=row.dead,
        callbacks=list(row.callbacks),
    )


def stalled(
    executor: Executor, *, since: dt.datetime, older_than: dt.datetime, limit: int
) -> list[tuple[str, str]]:
    """(group, world) pairs whose members have all finished and whose completion is unclaimed.

    Only groups with a member recorded between `since` and `older_than`: the
    member's own worker completes its group right after its commit; this is
    for a crash there, and the sweeper looks at the members recorded since its
    last look (an indexed range, not the whole table).
    """
    members = JobGroupMember
    claimed = (
        select(JobGroupCompletion.id)
        .where(
            JobGroupCompletion.group_id == members.group_id,
            JobGroupCompletion.world == members.world,
        )
        .exists()
    )
    recent = (
        select(members.group_id, members.world)
        .where(members.created_at >= since, members.created_at < older_than, ~claimed)
        .distinct()
        .subquery()
    )
    everyone = aliased(JobGroupMember)
    finished = (
        select(func.count())
        .where(everyone.group_id == recent.c.group_id, everyone.world == recent.c.world)
        .scalar_subquery()
    )
    query = (
        select(recent.c.group_id, recent.c.world)
        .join(JobGroup, JobGroup.id == recent.c.group_id)
        .where(finished >= JobGroup.size)
        .limit(limit)
    )
    return [(group_id, world) for group_id, world in executor.execute(query).all()]


def purge_groups(session: Session, *, older_than: dt.datetime, batch_size: int) -> int:
    """Delete up to `batch_size` each of groups, members and completions older than `older_than`.

    Called with the job records' retention: a group's rows go once its jobs' records
    may; a group still running past it is kept no longer than its records.
    """
    deleted = 0
    for model, column in (
        (JobGroupCompletion, JobGroupCompletion.completed_at),
        (JobGroupMember, JobGroupMember.created_at),
    ):
        doomed = select(model.id).where(column < older_than).limit(batch_size)
        result = session.execute(delete(model).where(model.id.in_(doomed.scalar_subquery())))
        deleted += int(getattr(result, "rowcount", 0) or 0)
    groups = select(JobGroup.id).where(JobGroup.created_at < older_than).limit(batch_size)
    result = session.execute(delete(JobGroup).where(JobGroup.id.in_(groups.scalar_subquery())))
    return deleted + int(getattr(result, "rowcount", 0) or 0)
