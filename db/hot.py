"""Statements every job runs: built once, compiled once per database, run cheaply.

A job record's upsert and its final update run for every message, so their
per-call cost is the worker's speed limit on short jobs.  Built through the ORM
on every call (the statement, its cache key, the ORM bulk-DML layer), a job's
record cost about 3,400 µs of CPU here; as hot statements about 700 µs
(`python -m bench.hot_path`).  A `HotStatement` is a Core statement with bound
parameters only, built on first use:

- On PostgreSQL its SQL is compiled once and run with `exec_driver_sql`, on
  the session's own connection and transaction, or on a Core connection (the
  send path's one-statement writes skip the ORM session: about 140 µs less CPU
  a send).  SQLAlchemy still wraps driver errors and notices dead connections;
  only the per-call compile-cache lookup and bind processing are skipped, so
  JSON parameters are encoded here.
- On other databases (SQLite: the demo and the unit tests) the Core
  statement runs through `Connection.execute`, bind processing and all.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from sqlalchemy import Connection, CursorResult, Executable
from sqlalchemy.orm import Session

# What a statement runs on: an ORM session's transaction, or a Core connection.
Executor = Session | Connection


def connection_of(executor: Executor) -> Connection:
    """The Core connection a session (or a connection itself) runs statements on."""
    return executor.connection() if isinstance(executor, Session) else executor


# Dialects whose compiled SQL is run as is (pyformat parameters, JSON as text).
DRIVER_SQL_DIALECTS = frozenset({"postgresql"})


class HotStatement:
    """A statement built by `build(dialect_name)` once, then run with `execute`."""

    def __init__(
        self, build: Callable[[str], Executable], *, json_params: Iterable[str] = ()
    ) -> None:
        self._build = build
        self._json_params = tuple(json_params)
        self._lock = threading.Lock()
        self._statements: dict[str, Executable] = {}
        self._compiled: dict[str, tuple[str, dict[str, Any]]] = {}

    def execute(self, executor: Executor, params: Mapping[str, Any]) -> CursorResult[Any]:
        """Run the statement in the session's transaction (or on the connection) with `params`."""
        connection = connection_of(executor)
        dialect = connection.dialect
        if dialect.name not in DRIVER_SQL_DIALECTS:
            result: CursorResult[Any] = connection.execute(self._statement(dialect.name), params)
            return result
        sql, fixed = self._compiled_for(dialect)
        values = {**fixed, **params}
        for name in self._json_params:
            if values[name] is not None:
                values[name] = json.dumps(values[name])
        return connection.exec_driver_sql(sql, values)

    def _statement(self, dialect_name: str) -> Executable:
        statement = self._statements.get(dialect_name)
        if statement is None:
            with self._lock:
                statement = self._statements.setdefault(dialect_name, self._build(dialect_name))
        return statement

    def _compiled_for(self, dialect: Any) -> tuple[str, dict[str, Any]]:
        compiled = self._compiled.get(dialect.name)
        if compiled is None:
            statement = self._statement(dialect.name)
            done = statement.compile(dialect=dialect)  # type: ignore[attr-defined]
            # Constants written into the statement travel as parameters of their own.
            fixed = {name: value for name, value in done.params.items() if value is not None}
            compiled = self._compiled.setdefault(dialect.name, (done.string, fixed))
        return compiled
