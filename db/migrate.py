"""Bring a database's schema to the revision this code expects, and check that it is there."""

from __future__ import annotations

import datetime as dt
import logging
from typing import TYPE_CHECKING

from sqlalchemy import Engine, create_engine, inspect, make_url, pool, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError, OperationalError

from db.revisions import MIGRATE_ADVICE, MIGRATIONS_DIR, SchemaBehind, head_from_files

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

logger = logging.getLogger(__name__)
# Alembic announces every plugin it loads at INFO: noise in every worker's start-up log.
logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)

# The key of the PostgreSQL advisory lock held while migrating ("taskyard" in ASCII), so
# that two processes starting together migrate one after the other.
MIGRATION_LOCK_KEY = 0x7461736B79617264
# Where `CREATE DATABASE` is sent from: every PostgreSQL server has this database.
MAINTENANCE_DATABASE = "postgres"
# SQLSTATEs of a database that appeared between our check and our CREATE DATABASE.
_ALREADY_CREATED = frozenset({"42P04", "23505"})  # duplicate_database, unique_violation
_INSUFFICIENT_PRIVILEGE = "42501"


def _scripts_config() -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def _script_directory() -> ScriptDirectory:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_scripts_config())


def _current_without_alembic(engine: Engine) -> str | None:
    """The database's revision from alembic_version (one row), or None when unsure."""
    with engine.connect() as connection:
        if not inspect(connection).has_table("alembic_version"):
            return None
        rows = connection.execute(text("SELECT version_num FROM alembic_version")).all()
    return str(rows[0][0]) if len(rows) == 1 else None


def alembic_config(database_url: str) -> Config:
    """An Alembic config for Taskyard's migrations on `database_url`, with no alembic.ini."""
    config = _scripts_config()
    # Config options go through configparser interpolation: a %-escaped password needs %%.
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def head_revision() -> str:
    """The revision this code expects the database to be at."""
    head = _script_directory().get_current_head()
    if head is None:
        raise RuntimeError(f"no Alembic revisions in {MIGRATIONS_DIR}: the package is incomplete")
    return head


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at, or None when it has no Taskyard tables."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def _shown(url: URL) -> str:
    return url.render_as_string(hide_password=True)


def ensure_database(database_url: str) -> bool:
    """Create the PostgreSQL database `database_url` names if it is missing; True if created."""
    url = make_url(database_url)
    if url.get_backend_name() != "postgresql":
        return False
    name = url.database
    if not name:
        raise ValueError(
            f"the database URL {_shown(url)} names no database: add one, e.g. /taskyard"
        )
    server = create_engine(
        url.set(database=MAINTENANCE_DATABASE),
        isolation_level="AUTOCOMMIT",
        poolclass=pool.NullPool,
    )
    try:
        with server.connect() as connection:
            exists = connection.scalar(
                text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name}
            )
            if exists:
                return False
            quoted = server.dialect.identifier_preparer.quote_identifier(name)
            try:
                connection.execute(text(f"CREATE DATABASE {quoted}"))
            except DBAPIError as exc:
                code = getattr(exc.orig, "pgcode", None)
                if code in _ALREADY_CREATED:
                    return False  # another process created it first
                if code == _INSUFFICIENT_PRIVILEGE:
                    raise PermissionError(
                        f"user {url.username!r} may not create the database of {_shown(url)}: "
                        "create it yourself, or grant that user CREATEDB"
                    ) from exc
                raise
    finally:
        server.dispose()
    logger.info("created the database %s", name)
    return True


def upgrade_to_head(database_url: str) -> str:
    """Create the database if needed and migrate it to the head revision, which it returns."""
    ensure_database(database_url)
    config = alembic_config(database_url)
    engine = create_engine(database_url, poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            locked = connection.dialect.name == "postgresql"
            if locked:
                # Session-level, so it spans Alembic's own transactions; closing the
                # connection releases it too, should the unlock below never run.
                connection.execute(
                    text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY}
                )
                connection.commit()
            try:
                from alembic import command

                config.attributes["connection"] = connection
                command.upgrade(config, "head")
                connection.commit()
                # Imported here: services import the models, which this module must not need.
                from services.partitions import ensure_partitions

                # The next days' partitions of `jobs`, should the daily job not have run.
                ensure_partitions(connection, today=dt.datetime.now(dt.UTC).date())
            finally:
                if locked:
                    connection.rollback()
                    connection.execute(
                        text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY}
                    )
                    connection.commit()
    finally:
        engine.dispose()
    head = head_revision()
    logger.info("the database is at revision %s", head)
    return head


def check_schema(engine: Engine) -> None:
    """Raise SchemaBehind unless the database behind `engine` is at the head revision."""
    fast_head = head_from_files()
    if fast_head is not None:
        try:
            if _current_without_alembic(engine) == fast_head:
                return
        except OperationalError:
            pass  # explained below, with Alembic's reading
    head = head_revision()
    shown = _shown(engine.url)
    try:
        current = current_revision(engine)
    except OperationalError as exc:
        # Only a missing database is ours to explain; a missing role is a login problem.
        if not ("database " in str(exc.orig) and "does not exist" in str(exc.orig)):
            raise
        raise SchemaBehind(
            f"the database {shown} does not exist, this code expects revision {head!r}: "
            f"{MIGRATE_ADVICE}"
        ) from exc
    if current == head:
        return
    if current is None:
        raise SchemaBehind(
            f"the database {shown} has no Taskyard tables, this code expects revision {head!r}: "
            f"{MIGRATE_ADVICE}"
        )
    known = {script.revision for script in _script_directory().walk_revisions()}
    if current not in known:
        raise SchemaBehind(
            f"the database {shown} is at revision {current!r}, which this code does not know "
            f"(it expects {head!r}): deploy the release that migrated it, or a newer one"
        )
    raise SchemaBehind(
        f"the database {shown} is at revision {current!r}, this code expects {head!r}: "
        f"{MIGRATE_ADVICE}"
    )
