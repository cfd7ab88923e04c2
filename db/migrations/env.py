"""Alembic's environment, configured in code by `db.migrate.alembic_config()`.

The URL comes from the "sqlalchemy.url" main option. A caller that already holds
a connection (tests, `upgrade_to_head` under its advisory lock) passes it in
`config.attributes["connection"]` instead, and then owns its transaction.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine, pool

import db.models  # noqa: F401  (importing it registers the tables on Base.metadata)
from db.base import Base
from services.partitions import include_name

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError(
            "the Alembic config has no sqlalchemy.url: build it with db.migrate.alembic_config()"
        )
    return url


def run_migrations_offline() -> None:
    """Write the migrations out as SQL for the configured URL, without connecting."""
    url = _url()
    context.configure(
        url=url,
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        render_as_batch=url.startswith("sqlite"),
    )
    with context.begin_transaction():
        context.run_migrations()


def _run_on(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # The jobs table's partitions are made at run time (services/partitions.py).
        include_name=include_name,
        # SQLite cannot ALTER most things; batch mode copies the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Run the migrations on the caller's connection, or on one made from the URL."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _run_on(connection)
        return
    engine = create_engine(_url(), poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            _run_on(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
