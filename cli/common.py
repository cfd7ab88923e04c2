"""What every command shares: the root group, settings, one transaction, output, errors."""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypedDict, TypeVar
from urllib.parse import urlsplit, urlunsplit

import click
from dramatiq.broker import Broker
from dramatiq.errors import BrokerConnectionError
from pika.exceptions import AMQPError
from sqlalchemy import make_url
from sqlalchemy.exc import OperationalError, ProgrammingError
from sqlalchemy.orm import Session

from cli.render import emit
from db.migrate import MIGRATE_ADVICE, SchemaBehind, check_schema
from db.models import (
    JOB_FINAL_STATES,
    JOB_QUEUED,
    JOB_RETRYING,
    JOB_RUNNING,
)
from db.session import make_engine, make_session_factory
from middleware.log_setup import configure_logging
from services.errors import TaskyardError, UnknownTenant
from settings import Settings, SettingsError, load_settings

T = TypeVar("T")

EXIT_FAILED = 1
# 2 is click's own exit code for a usage error (unknown option, invalid argument).
EXIT_UNREACHABLE = 3
# The format of the libraries' log lines `--debug` shows.
CLI_FORMAT = "%(levelname)s %(name)s: %(message)s"


class _Id(click.IntRange):
    """A row id; its name is what a usage error calls it ("'abc' is not a valid id")."""

    name = "id"


# Ids are PostgreSQL bigints: a larger number is a usage error, not a database error.
ID = _Id(1, 2**63 - 1)
JOB_STATES = sorted(JOB_FINAL_STATES | {JOB_QUEUED, JOB_RUNNING, JOB_RETRYING})
# SQLSTATEs of a schema that is missing or older than the code: undefined table, column.
_SCHEMA_MISSING = frozenset({"42P01", "42703"})
# SQLSTATE classes of a database that cannot be used at all: connection, authorization.
_UNREACHABLE_CLASSES = ("08", "28", "57P")


class CommandFailed(Exception):
    """A command's own one-line error (what failed, on which input, what to do)."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class State:
    """What one invocation shares between the group and its command."""

    debug: bool = False
    settings: Settings | None = None
    broker: Broker | None = None

    def load_settings(self) -> Settings:
        """The settings, read from the environment once per invocation."""
        if self.settings is None:
            self.settings = load_settings()
        return self.settings

    def load_broker(self) -> Broker:
        """The installed broker with every actor declared; only commands that send need it."""
        if self.broker is None:
            self.load_settings()
            import actors  # noqa: F401  (declares the actors on the broker it installs)
            import brokers

            self.broker = brokers.broker
        return self.broker


def shown_url(database_url: str) -> str:
    """The database URL with its password hidden."""
    return make_url(database_url).render_as_string(hide_password=True)


def shown_broker_url(broker_url: str) -> str:
    """The broker URL with its password hidden."""
    parts = urlsplit(broker_url)
    if parts.password is None:
        return broker_url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _first_line(exc: BaseException | None) -> str:
    lines = str(exc).strip().splitlines() if exc is not None else []
    return lines[0].strip() if lines else type(exc).__name__


def describe_error(
    exc: Exception, database_url: str | None, broker_url: str | None = None
) -> tuple[int, str]:
    """The exit code and the one-line message for an error that reached the command line."""
    if isinstance(exc, CommandFailed):
        return exc.exit_code, str(exc)
    if isinstance(exc, BrokerConnectionError | AMQPError):
        where = shown_broker_url(broker_url) if broker_url else "BROKER_URL"
        detail = _first_line(exc) if str(exc).strip() else type(exc).__name__
        return EXIT_UNREACHABLE, (
            f"cannot reach the broker at {where} ({detail}): check BROKER_URL"
        )
    where = shown_url(database_url) if database_url else "DATABASE_URL"
    cause = exc.__cause__
    # check_schema reads any "... does not exist" as a missing database; a missing
    # role is a login problem, which migrating would not fix.
    if (
        isinstance(exc, SchemaBehind)
        and isinstance(cause, OperationalError)
        and 'database "' not in _first_line(cause.orig)
    ):
        exc = cause
    if isinstance(exc, SettingsError):
        return EXIT_FAILED, f"{exc}: fix that variable of the environment"
    if isinstance(exc, UnknownTenant):
        return EXIT_FAILED, f"{exc}: `taskyard tenant list` shows the tenants"
    if isinstance(exc, TaskyardError | SchemaBehind | PermissionError):
        return EXIT_FAILED, str(exc)
    detail = _first_line(getattr(exc, "orig", exc))
    code = getattr(getattr(exc, "orig", None), "pgcode", None)
    if isinstance(exc, OperationalError):
        if "authentication failed" in detail or 'role "' in detail:
            return EXIT_UNREACHABLE, (
                f"the database at {where} refused the login ({detail}): "
                "check the user and password in DATABASE_URL"
            )
        if code is None or code.startswith(_UNREACHABLE_CLASSES):
            return EXIT_UNREACHABLE, (
                f"cannot reach the database at {where} ({detail}): "
                "is PostgreSQL running? (DATABASE_URL)"
            )
    if isinstance(exc, ProgrammingError) and code in _SCHEMA_MISSING:
        return EXIT_FAILED, (
            f"the database {where} lacks part of the schema ({detail}): {MIGRATE_ADVICE}"
        )
    return EXIT_FAILED, (
        f"unexpected {type(exc).__name__}: {detail} "
        "(rerun as `taskyard --debug ...` to see the traceback)"
    )


class _Taskyard(click.Group):
    """The root group: an error from any command becomes one line on stderr here."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            state = ctx.ensure_object(State)
            url = state.settings.database_url if state.settings else None
            broker_url = state.settings.broker_url if state.settings else None
            exit_code, message = describe_error(exc, url, broker_url)
            if state.debug:
                click.echo("".join(traceback.format_exception(exc)), err=True, nl=False)
            click.echo(f"error: {' '.join(message.split())}", err=True)
            ctx.exit(exit_code)


def run(ctx: click.Context, work: Callable[[Session], T]) -> T:
    """Run `work` in one transaction on a database at the expected schema, and commit."""
    settings = ctx.ensure_object(State).load_settings()
    engine = make_engine(settings)
    try:
        check_schema(engine)
        with make_session_factory(engine).begin() as session:
            return work(session)
    finally:
        engine.dispose()


def json_argument(raw: str | None, option: str) -> dict[str, Any]:
    """The JSON object an option carries (`--args '{"a": 1}'`); a one-line error otherwise."""
    if raw is None:
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise CommandFailed(
            f"{option} is not valid JSON ({exc.msg} at column {exc.colno}): {raw!r}; "
            """pass an object, e.g. '{"key": "value"}'"""
        ) from exc
    if not isinstance(value, dict):
        raise CommandFailed(f"{option} must be a JSON object, got {raw!r}")
    return value


class _Since(click.ParamType):  # type: ignore[type-arg]
    """A moment: an ISO-8601 time (UTC unless it says) or an age like 30m, 6h, 2d."""

    name = "since"
    _UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, dt.datetime):
            return value
        text = str(value).strip()
        unit = self._UNITS.get(text[-1:])
        if unit is not None and text[:-1].isdigit():
            return dt.datetime.now(dt.UTC) - dt.timedelta(seconds=int(text[:-1]) * unit)
        try:
            moment = dt.datetime.fromisoformat(text)
        except ValueError:
            self.fail(f"{text!r} is neither an age (30m, 6h, 2d) nor an ISO-8601 time", param, ctx)
        return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


SINCE = _Since()

json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")


def transaction_command(
    group: click.Group, name: str, render: Callable[[T], None], *, help: str | None = None
) -> Callable[[Callable[..., T]], click.Command]:
    """Make a function of the session and the command's parameters into `group NAME [--json]`.

    The function runs in one transaction (`run`) and what it returns is printed
    by `render`, or as JSON. Its click arguments and options go below this
    decorator; the help is its docstring unless `help` is given.
    """

    def decorate(work: Callable[..., T]) -> click.Command:
        @functools.wraps(work, updated=())
        @click.pass_context
        def command(ctx: click.Context, /, as_json: bool, **values: Any) -> None:
            emit(run(ctx, lambda session: work(session, **values)), as_json, render)

        # The function's own parameters in the order written, then --json, as on every command.
        params = list(reversed(getattr(work, "__click_params__", [])))
        return group.command(name, params=params, help=help)(json_option(command))

    return decorate


class Removed(TypedDict):
    """What a `remove` command deleted: the row's id."""

    removed: int


def remove_command(
    group: click.Group, noun: str, remove: Callable[[Session, int], None], *, help: str
) -> click.Command:
    """Add `GROUP remove ID [--json]`: delete one NOUN with `remove`; prints `removed NOUN ID`."""

    def render(info: Removed) -> None:
        click.echo(f"removed {noun} {info['removed']}")

    @transaction_command(group, "remove", render, help=help)
    @click.argument("record_id", metavar="ID", type=ID)
    def command(session: Session, record_id: int) -> Removed:
        remove(session, record_id)
        return {"removed": record_id}

    return command


@click.group(
    cls=_Taskyard, name="taskyard", context_settings={"help_option_names": ["-h", "--help"]}
)
@click.option("--debug", is_flag=True, help="Show the traceback of an error.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Taskyard's operator tool: tenants, schedules, jobs, dead letters, workers, health."""
    ctx.obj = State(debug=debug)
    # The libraries' own log lines (a publisher retrying, a pool reconnecting) would
    # break the one-line error; --debug shows them, at TASKYARD_LOG_LEVEL and in
    # TASKYARD_LOG_FORMAT.
    if debug:
        configure_logging(ctx.obj.load_settings(), quiet_libraries=False, text_format=CLI_FORMAT)
    else:
        logging.getLogger().addHandler(logging.NullHandler())
