"""Statements every job runs: built once, compiled once per database, run cheaply.

A job record's upsert and its final update run for every message, so their
per-call cost is the worker's speed limit on short jobs.  Built through the ORM
on every call, a statement pays for building it, its cache key and the ORM
bulk-DML layer every time; a hot statement pays for none of these
(`python -m bench.hot_path` measures both; its figures are in BENCHMARKS.md).
A `HotStatement` is a Core statement with bound parameters only, built on
first use:

- On PostgreSQL its SQL is compiled once and run with `exec_driver_sql`, on
  the session's own connection and transaction, or on a Core connection (the
  send path's one-statement writes skip the ORM session and its flush).
  SQLAlchemy still wraps driver errors and notices dead connections; only the
  per-call compile-cache lookup and bind processing are skipped, so JSON
  parameters are encoded here.
- On PostgreSQL, unless `TASKYARD_DB_PREPARED_STATEMENTS=false`, it is also a
  prepared statement: `PREPARE` once per server connection (a pool's warm-up
  does it before the first job), then `EXECUTE` with the parameters, so the
  server no longer parses and plans the record's statements for every job
  (`python -m bench.hot_path` measures the database CPU per job with and
  without).  A connection whose
  prepared statements are gone (a pooler in transaction mode, `DISCARD ALL`)
  or stale (a migration changed their result) fails that one statement, and
  the pool replaces it; after a statement gone, the process warns once and
  stops preparing on that pool.
- On other databases (SQLite: the demo and the unit tests) the Core
  statement runs through `Connection.execute`, bind processing and all.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, CursorResult, Executable, Pool
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

# What a statement runs on: an ORM session's transaction, or a Core connection.
Executor = Session | Connection


def connection_of(executor: Executor) -> Connection:
    """The Core connection a session (or a connection itself) runs statements on."""
    return executor.connection() if isinstance(executor, Session) else executor


# Dialects whose compiled SQL is run as is (pyformat parameters, JSON as text).
DRIVER_SQL_DIALECTS = frozenset({"postgresql"})
# The engine execution option that makes hot statements server-side prepared ones.
PREPARE_OPTION = "taskyard_prepare"
# Where a DBAPI connection remembers what it has prepared (SQLAlchemy empties a
# connection's `info` when it replaces the DBAPI connection).
_PREPARED = "taskyard_prepared"
# PostgreSQL's errors for a prepared statement that is not there (26000) or is
# there already though this connection never prepared it (42P05): the server
# connection is not the one that prepared it, as behind a pooler in transaction
# mode (or someone ran DISCARD ALL).
POOLED_AWAY = frozenset({"26000", "42P05"})
# ... and for one whose plan can no longer return the same columns (a migration
# changed the table); a new connection prepares it afresh.
PLAN_CHANGED = "0A000"
# Pools that lost a prepared statement to a pooler: their statements run unprepared.
_unprepared_pools: weakref.WeakSet[Pool] = weakref.WeakSet()
logger = logging.getLogger("taskyard.db")
_PYFORMAT = re.compile(r"%\((\w+)\)s")
_TYPMOD = re.compile(r"\([\d, ]+\)")
_names = itertools.count()


class HotStatement:
    """A statement built by `build(dialect_name)` once, then run with `execute`."""

    def __init__(
        self, build: Callable[[str], Executable], *, json_params: Iterable[str] = ()
    ) -> None:
        self._build = build
        self._json_params = tuple(json_params)
        self._lock = threading.Lock()
        self._statements: dict[str, Executable] = {}
        self._compiled: dict[str, _Compiled] = {}
        self.name = f"taskyard_hot_{next(_names)}"

    def execute(self, executor: Executor, params: Mapping[str, Any]) -> CursorResult[Any]:
        """Run the statement in the session's transaction (or on the connection) with `params`."""
        connection = connection_of(executor)
        dialect = connection.dialect
        if dialect.name not in DRIVER_SQL_DIALECTS:
            result: CursorResult[Any] = connection.execute(self._statement(dialect.name), params)
            return result
        compiled = self._compiled_for(dialect)
        values = {**compiled.fixed, **params}
        for name in self._json_params:
            if values[name] is not None:
                values[name] = json.dumps(values[name])
        if (
            compiled.prepare is None
            or not connection.get_execution_options().get(PREPARE_OPTION)
            or connection.engine.pool in _unprepared_pools
        ):
            return connection.exec_driver_sql(compiled.sql, values)
        prepared: set[str] = connection.info.setdefault(_PREPARED, set())
        try:
            if self.name not in prepared:
                # Once per server connection; PREPARE outlives a rolled-back transaction.
                connection.exec_driver_sql(compiled.prepare)
                prepared.add(self.name)
            return connection.exec_driver_sql(compiled.execute, values)
        except DBAPIError as exc:
            code = getattr(exc.orig, "pgcode", None)
            if code in POOLED_AWAY:
                self._pooled_away(connection)
            if code in POOLED_AWAY or code == PLAN_CHANGED:
                # This statement fails (its job is retried as after any error);
                # the pool replaces the connection for the next one.
                connection.invalidate()
            raise

    def _pooled_away(self, connection: Connection) -> None:
        pool = connection.engine.pool
        if pool in _unprepared_pools:
            return
        _unprepared_pools.add(pool)
        logger.warning(
            "The database connection does not have the statement %s that it prepared: a "
            "pooler in transaction mode (PgBouncer's pool_mode = transaction) is between "
            "Taskyard and PostgreSQL, or someone ran DISCARD ALL. This process runs its "
            "statements unprepared from now on; behind such a pooler, set "
            "TASKYARD_DB_PREPARED_STATEMENTS=false.",
            self.name,
        )

    def _statement(self, dialect_name: str) -> Executable:
        statement = self._statements.get(dialect_name)
        if statement is None:
            with self._lock:
                statement = self._statements.setdefault(dialect_name, self._build(dialect_name))
        return statement

    def _compiled_for(self, dialect: Any) -> _Compiled:
        compiled = self._compiled.get(dialect.name)
        if compiled is None:
            statement = self._statement(dialect.name)
            done = statement.compile(dialect=dialect)  # type: ignore[attr-defined]
            # Constants written into the statement travel as parameters of their own.
            fixed = {name: value for name, value in done.params.items() if value is not None}
            types = {done.bind_names[bind]: bind.type for bind in done.binds.values()}
            compiled = self._compiled.setdefault(
                dialect.name, _prepared(self.name, done.string, fixed, types, dialect)
            )
        return compiled


@dataclass(frozen=True, slots=True)
class _Compiled:
    """A hot statement's SQL, its constant parameters, and its prepared form (if it has one)."""

    sql: str
    fixed: dict[str, Any]
    prepare: str | None
    execute: str


def _prepared(
    name: str, sql: str, fixed: dict[str, Any], types: Mapping[str, Any], dialect: Any
) -> _Compiled:
    """`sql` with `PREPARE name (types) AS ...` (numbered parameters) and its `EXECUTE name(...)`.

    The parameters' types are declared: PostgreSQL cannot infer one used only
    as a CASE branch.  A statement with a parameter of no known type is not prepared.
    """
    order: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match.group(1) not in order:
            order.append(match.group(1))
        return f"${order.index(match.group(1)) + 1}"

    # PREPARE runs without parameters, so an escaped percent sign is a plain one.
    body = _PYFORMAT.sub(number, sql).replace("%%", "%")
    arguments = ", ".join(f"%({param})s" for param in order)
    execute = f"EXECUTE {name}({arguments})" if order else f"EXECUTE {name}"
    if any(types[param]._isnull for param in order):
        return _Compiled(sql, fixed, None, execute)
    # Without a length (VARCHAR, not VARCHAR(36)): a longer value is then refused
    # by the column it is written to, or simply matches nothing, as without PREPARE.
    declared = ", ".join(_TYPMOD.sub("", types[param].compile(dialect=dialect)) for param in order)
    head = f"PREPARE {name} ({declared})" if order else f"PREPARE {name}"
    return _Compiled(sql, fixed, f"{head} AS {body}", execute)
