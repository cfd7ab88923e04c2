"""How Taskyard connects to PostgreSQL: one set of connection arguments for every path.

SQLAlchemy's engine (db/session.py) and the command line's quick reads
(cli/quick.py, plain psycopg2) both take them from here.  No SQLAlchemy here.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

# Every connection: a bounded wait for an unreachable server, and a name in pg_stat_activity.
CONNECT_ARGS: dict[str, Any] = {"connect_timeout": 5, "application_name": "taskyard"}


def libpq_url(database_url: str) -> str | None:
    """The libpq URI of a PostgreSQL `DATABASE_URL` (the driver part dropped), else None.

    `postgresql+psycopg2://u:p@host/db?sslmode=require` is `postgresql://u:p@host/db?...`
    to libpq: the user, password, host, port, database and query keywords are the
    same, percent-escapes and all.  Any other database (SQLite) gives None.
    """
    parts = urlsplit(database_url)
    backend = parts.scheme.split("+", 1)[0]
    if backend not in ("postgresql", "postgres"):
        return None
    return urlunsplit(parts._replace(scheme="postgresql"))
