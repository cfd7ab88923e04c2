"""The engine and session factory, built from settings; nothing connects at import."""

from __future__ import annotations

import select
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    DateTime,
    Engine,
    FromClause,
    bindparam,
    column,
    create_engine,
    event,
    text,
)
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker

from db.connect import CONNECT_ARGS
from db.hot import PREPARE_OPTION
from settings import Settings

if TYPE_CHECKING:
    from services.listing_sql import Statement

# One connection per worker thread plus headroom for the producer side.
POOL_SIZE = 10
POOL_OVERFLOW = 10


def make_engine(settings: Settings) -> Engine:
    """Build the engine for `settings.database_url` (lazily: no connection yet)."""
    url = settings.database_url
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.close()

        return engine
    engine = create_engine(
        url,
        pool_size=POOL_SIZE,
        max_overflow=POOL_OVERFLOW,
        connect_args=CONNECT_ARGS,
        # The job record's statements as prepared ones (db/hot.py).
        execution_options={PREPARE_OPTION: settings.db_prepared_statements},
    )
    # Not pool_pre_ping: its SELECT 1 was a round trip per job.  A connection
    # the server closed (a restart, an idle timeout) has said so on its socket,
    # which costs one poll() to see; the pool then opens a fresh one.
    event.listen(engine, "checkout", refuse_closed_connection)
    return engine


def refuse_closed_connection(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
    """Make the pool replace a pooled connection that the server has closed."""
    if closed_by_server(dbapi_connection):
        raise DisconnectionError("the database closed this pooled connection")


def closed_by_server(dbapi_connection: Any) -> bool:
    """Whether an idle connection is closed or has something unread (the server's goodbye).

    An idle PostgreSQL connection receives nothing unless the server ends it
    (it sends the reason, then closes) or a LISTEN fires, which Taskyard does
    not use; either way it is not fit to start a transaction on.
    """
    if getattr(dbapi_connection, "closed", 0):
        return True
    try:
        poller = select.poll()
        poller.register(dbapi_connection.fileno(), select.POLLIN | select.POLLHUP | select.POLLERR)
        return bool(poller.poll(0))
    except (OSError, ValueError, AttributeError):
        return True


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """A session factory whose objects stay readable after commit."""
    return sessionmaker(engine, expire_on_commit=False)


def fetch(session: Session, statement: Statement, table: FromClause) -> list[Any]:
    """Run a textual statement (services/listing_sql.py); its rows, typed by `table`'s columns.

    Each row reads as the model would (`row.created_at`: a time, `row.args`: JSON
    decoded), on PostgreSQL and on SQLite alike: the columns take their types from
    the table, times are bound as SQLAlchemy writes them, lists expand for `IN`.
    """
    params = [
        bindparam(name, value, type_=DateTime(timezone=True))
        if name in statement.times
        else bindparam(name, value, expanding=name in statement.lists)
        for name, value in statement.params.items()
    ]
    typed = (
        text(statement.sql)
        .bindparams(*params)
        .columns(*(column(name, table.c[name].type) for name in statement.columns))
    )
    return list(session.execute(typed).all())
