"""One upsert for PostgreSQL (production) and SQLite (the demo): ON CONFLICT DO UPDATE."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import ColumnElement, false, func, or_
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session
from sqlalchemy.sql.base import ReadOnlyColumnCollection
from sqlalchemy.sql.elements import KeyedColumnElement

from db.base import Base

_Excluded = ReadOnlyColumnCollection[str, KeyedColumnElement[Any]]


def upsert(
    session: Session,
    model: type[Base],
    values: Mapping[str, Any],
    *,
    key: Sequence[str],
    compare: Sequence[str],
    also_set: Sequence[str] = (),
) -> bool:
    """Insert `values`, or update the row with the same `key`; True when inserted or changed.

    The row is updated only when a `compare` column differs (then the `also_set`
    columns and `updated_at` are written too), and the WHERE of ON CONFLICT makes
    an unchanged row return nothing: one statement, safe against a concurrent upsert.
    """
    table = model.__table__

    def set_(excluded: _Excluded) -> dict[str, Any]:
        columns: dict[str, Any] = {name: excluded[name] for name in (*compare, *also_set)}
        if "updated_at" in table.c:
            # ON CONFLICT DO UPDATE skips onupdate defaults.
            columns["updated_at"] = func.now()
        return columns

    def differs(excluded: _Excluded) -> ColumnElement[bool]:
        return or_(false(), *(table.c[name].is_distinct_from(excluded[name]) for name in compare))

    dialect = session.get_bind().dialect.name
    stmt: Any
    if dialect == "postgresql":
        pg_stmt = postgresql.insert(model).values(dict(values))
        stmt = pg_stmt.on_conflict_do_update(
            index_elements=list(key), set_=set_(pg_stmt.excluded), where=differs(pg_stmt.excluded)
        )
    elif dialect == "sqlite":
        lite_stmt = sqlite.insert(model).values(dict(values))
        stmt = lite_stmt.on_conflict_do_update(
            index_elements=list(key),
            set_=set_(lite_stmt.excluded),
            where=differs(lite_stmt.excluded),
        )
    else:
        raise RuntimeError(f"upsert is written for PostgreSQL and SQLite, not {dialect}")
    pk = next(iter(table.primary_key))
    return session.execute(stmt.returning(pk)).first() is not None
