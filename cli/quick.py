"""Quick reads: a listing read with plain psycopg2, so that its command never imports SQLAlchemy.

SQLAlchemy and the models take most of a command's start-up; a read-only
listing that an operator runs again and again (`taskyard jobs list`) needs
neither.  It runs `services.listing_sql`'s statements, the very ones
SQLAlchemy runs for the console, on one read-only connection.

A quick read is tried only on PostgreSQL at the schema this code expects.
Anything else raises `QuickUnavailable` before a row is read, and the command
runs the usual way, through SQLAlchemy (`cli.common.run`), which explains any
error (a database down, a schema behind) as every command does.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections import namedtuple
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from db.connect import CONNECT_ARGS, libpq_url
from db.revisions import head_from_files
from services.job_views import RunningJob, StoredJob, running_now
from services.listing_sql import Statement, jobs_page, jobs_with_ids, live_heartbeats

if TYPE_CHECKING:
    from settings import Settings

T = TypeVar("T")


class QuickUnavailable(Exception):
    """A quick read cannot be made here: run the command through SQLAlchemy instead."""


@functools.cache
def _row_type(columns: tuple[str, ...]) -> Any:
    """A row class whose attributes are these columns."""
    return namedtuple("Row", columns)


class QuickReader:
    """`services.job_views.JobsReader` on one psycopg2 connection."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection

    def rows(self, statement: Statement) -> list[Any]:
        """The statement's rows, each with its columns as attributes (as SQLAlchemy's are)."""
        row_type = _row_type(statement.columns)
        with self.connection.cursor() as cursor:
            cursor.execute(statement.pyformat(), statement.driver_params())
            return [row_type(*row) for row in cursor.fetchall()]

    def page(self, **filters: Any) -> list[StoredJob]:
        """A page of job records (`jobs_page`)."""
        return self.rows(jobs_page("postgresql", **filters))

    def with_ids(self, message_ids: list[str]) -> list[StoredJob]:
        """The records of these messages."""
        return self.rows(jobs_with_ids(message_ids))

    def running(
        self,
        *,
        now: dt.datetime,
        stale_after: dt.timedelta,
        tenant_id: int | None = None,
        actor: str | None = None,
    ) -> list[RunningJob]:
        """What live workers run now, as `services.workers.running_jobs` reads it."""
        rows = self.rows(live_heartbeats(now - stale_after))
        return running_now(rows, now=now, tenant_id=tenant_id, actor=actor)


def read_quickly(settings: Settings, work: Callable[[QuickReader], T]) -> T:
    """`work` on a quick reader, in one read-only transaction; `QuickUnavailable` if it can't.

    Errors of `work` itself (a refused filter, say) pass through as they are; a
    database error falls back (`QuickUnavailable`), and the usual path explains it.
    """
    url = libpq_url(settings.database_url)
    if url is None:
        raise QuickUnavailable("not PostgreSQL")
    head = head_from_files()
    if head is None:
        raise QuickUnavailable("the migrations are not one line: Alembic reads the head")
    import psycopg2

    try:
        connection = psycopg2.connect(url, **CONNECT_ARGS)
    except psycopg2.Error as exc:
        raise QuickUnavailable(f"cannot connect: {exc}") from exc
    try:
        connection.set_session(readonly=True)
        with connection.cursor() as cursor:
            cursor.execute("SELECT to_regclass('alembic_version') IS NOT NULL")
            (has_versions,) = cursor.fetchone()
            if not has_versions:
                raise QuickUnavailable("no Taskyard schema")
            cursor.execute("SELECT version_num FROM alembic_version")
            if cursor.fetchall() != [(head,)]:
                raise QuickUnavailable(f"the schema is not at revision {head}")
        return work(QuickReader(connection))
    except psycopg2.Error as exc:
        raise QuickUnavailable(f"the database refused a quick read: {exc}") from exc
    finally:
        connection.close()
