"""What every command shares: settings, one transaction, output, errors (and the root group)."""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypedDict, TypeVar

import click

from cli.quick import QuickUnavailable
from cli.render import emit
from cli.root import main as main  # (re-exported: each command module adds itself to it)
from db.revisions import MIGRATE_ADVICE, SchemaBehind
from db.states import JOB_FINAL_STATES, JOB_QUEUED, JOB_RETRYING, JOB_RUNNING
from services.errors import TaskyardError, UnknownTenant
from services.pagination import InvalidCursor, Position, decode_cursor
from services.redaction import hide_password
from settings import Settings, SettingsError, load_settings

# SQLAlchemy is imported by the commands that use it, when they run (`run`): a command
# that reads without it (cli/quick.py) starts in a fraction of the time.
if TYPE_CHECKING:
    from dramatiq.broker import Broker
    from sqlalchemy.orm import Session

T = TypeVar("T")

EXIT_FAILED = 1
# 2 is click's own exit code for a usage error (unknown option, invalid argument).
EXIT_UNREACHABLE = 3
# The format of the libraries' log lines `--debug` shows.
CLI_FORMAT = "%(levelname)s %(name)s: %(message)s"


# Ids are PostgreSQL bigints: a larger number is a usage error, not a database error.
MAX_ID = 2**63 - 1
# The most records one page of a listing shows.
MAX_LIMIT = 10_000


class _Id(click.ParamType):  # type: ignore[type-arg]  # (generic from click 8.2 on only)
    """A row id, 1 to a bigint's largest; the help shows `ID`, not the range's bounds."""

    name = "id"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        else:
            text = str(value).strip()
            if not text.isdigit():
                self.fail(f"{value!r} is not a valid id (a whole number from 1)", param, ctx)
            number = int(text)
        if not 1 <= number <= MAX_ID:
            self.fail(
                f"{value!r} is not a valid id (a whole number from 1 to {MAX_ID})", param, ctx
            )
        return number


ID = _Id()


class Bounded(click.ParamType):  # type: ignore[type-arg]
    """A number from `low` to `high`, stated in the option's help in words.

    Click's own ranges print `[1<=x<=10000]` in every help; this type shows the
    metavar alone, and its error names the input and the bounds.
    """

    def __init__(self, kind: type[int] | type[float], low: float, high: float, name: str) -> None:
        self.kind, self.low, self.high, self.name = kind, low, high, name
        self.bounds = (low, high)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        whole = self.kind is int
        what = "a whole number" if whole else "a number"
        try:
            number = self.kind(value) if not isinstance(value, bool) else None
        except (TypeError, ValueError):
            number = None
        if number is None or not self.low <= number <= self.high:
            low, high = (f"{int(b)}" if float(b).is_integer() else f"{b}" for b in self.bounds)
            self.fail(f"{value!r} is not {what} from {low} to {high}", param, ctx)
        return number


def limit_option(default: int) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """`--limit N`: how many records a listing shows (1 to `MAX_LIMIT`)."""
    return click.option(
        "--limit",
        type=Bounded(int, 1, MAX_LIMIT, "limit"),
        default=default,
        show_default=True,
        metavar="N",
        help=f"How many records to show, at most {MAX_LIMIT}.",
    )


JOB_STATES = sorted(JOB_FINAL_STATES | {JOB_QUEUED, JOB_RUNNING, JOB_RETRYING})
# SQLSTATEs of a schema that is missing or older than the code: undefined table, column.
_SCHEMA_MISSING = frozenset({"42P01", "42703"})
# SQLSTATE classes of a database that cannot be used at all: connection, authorization.
_UNREACHABLE_CLASSES = ("08", "28", "57P")


def tenant_option(
    help: str, *, required: bool = False
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """`--tenant ID`: the one way every command names the tenant it works within.

    The rule: the tenant a command filters by, or whose schedules, secrets and
    integrations it adds, reads or removes, is `--tenant ID`; only the `tenant`
    commands, which act on the tenant itself, take it as their ID argument (as
    `schedule show ID` takes a schedule's).
    """
    return click.option("--tenant", "tenant_id", type=ID, required=required, help=help)


class TenantWasFirst(click.Command):
    """A command whose tenant was its first argument before it became `--tenant ID`.

    The old form (`locker set 7 KEY`) still runs, as `locker set --tenant 7 KEY`,
    with a warning on stderr; it is recognised by one argument more than the
    command takes, the first a whole number, and no --tenant.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, _tenant_moved_to_option(ctx, self, args))


def _tenant_moved_to_option(
    ctx: click.Context, command: click.Command, args: list[str]
) -> list[str]:
    valued = {
        name
        for param in command.params
        if isinstance(param, click.Option) and not param.is_flag and not param.count
        for name in param.opts
    }
    positions: list[int] = []
    index = 0
    while index < len(args):
        token = args[index]
        if token == "--":
            positions += range(index + 1, len(args))
            break
        if token in ("--help", "-h"):
            return args
        if token == "--tenant" or token.startswith("--tenant="):
            return args
        if token.startswith("-") and token != "-":
            index += 2 if token in valued else 1
            continue
        positions.append(index)
        index += 1
    wanted = sum(1 for param in command.params if isinstance(param, click.Argument))
    if len(positions) != wanted + 1 or not args[positions[0]].isdigit():
        return args
    tenant = args[positions[0]]
    rest = args[: positions[0]] + args[positions[0] + 1 :]
    words = " ".join(ctx.command_path.split()[1:]) or ctx.command_path
    click.echo(
        f"warning: `taskyard {words} {tenant} ...` (the tenant first) is deprecated and will "
        f"be removed: write `taskyard {words} --tenant {tenant} ...`",
        err=True,
    )
    return ["--tenant", tenant, *rest]


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
    return hide_password(database_url)


def shown_broker_url(broker_url: str) -> str:
    """The broker URL with its password hidden."""
    return hide_password(broker_url)


def _first_line(exc: BaseException | None) -> str:
    lines = str(exc).strip().splitlines() if exc is not None else []
    return lines[0].strip() if lines else type(exc).__name__


def _broker_errors() -> tuple[type[BaseException], ...]:
    """The broker libraries' error classes, of those this process has imported.

    A command that never loaded Dramatiq or pika cannot have raised their errors,
    so reading them from `sys.modules` spares every command importing both.
    """
    found = (
        _loaded_class("dramatiq.errors", "BrokerConnectionError"),
        _loaded_class("pika.exceptions", "AMQPError"),
    )
    return tuple(error for error in found if error is not None)


def _loaded_class(module: str, name: str) -> type[Exception] | None:
    """The class `name` of `module` if this process has imported that module, else None."""
    loaded = sys.modules.get(module)
    found = getattr(loaded, name, None) if loaded is not None else None
    return found if isinstance(found, type) and issubclass(found, Exception) else None


class _NotLoaded(Exception):
    """Stands for an error class of a library this process never imported: nothing raises it."""


def _database_error(name: str) -> type[Exception]:
    """SQLAlchemy's error class `name`, or `_NotLoaded` when SQLAlchemy was never imported.

    As with the broker's errors, a command that never loaded SQLAlchemy cannot have
    raised its errors, and explaining an error should not cost importing it.
    """
    return _loaded_class("sqlalchemy.exc", name) or _NotLoaded


def describe_error(
    exc: Exception, database_url: str | None, broker_url: str | None = None
) -> tuple[int, str]:
    """The exit code and the one-line message for an error that reached the command line."""
    if isinstance(exc, CommandFailed):
        return exc.exit_code, str(exc)
    if isinstance(exc, _broker_errors()):
        where = shown_broker_url(broker_url) if broker_url else "BROKER_URL"
        detail = _first_line(exc) if str(exc).strip() else type(exc).__name__
        return EXIT_UNREACHABLE, (
            f"cannot reach the broker at {where} ({detail}): check BROKER_URL"
        )
    where = shown_url(database_url) if database_url else "DATABASE_URL"
    OperationalError = _database_error("OperationalError")
    ProgrammingError = _database_error("ProgrammingError")
    cause = exc.__cause__
    # check_schema reads any "... does not exist" as a missing database; a missing
    # role is a login problem, which migrating would not fix.
    if (
        isinstance(exc, SchemaBehind)
        and isinstance(cause, OperationalError)
        and 'database "' not in _first_line(getattr(cause, "orig", cause))
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
    if isinstance(exc, ProgrammingError) and code is None and detail.startswith("invalid dsn"):
        # libpq refused the URL before connecting: an option it does not know, say.
        return EXIT_FAILED, (
            f"the database URL {where} is not one PostgreSQL's client takes ({detail}): "
            "fix DATABASE_URL"
        )
    if isinstance(exc, ProgrammingError) and code in _SCHEMA_MISSING:
        return EXIT_FAILED, (
            f"the database {where} lacks part of the schema ({detail}): {MIGRATE_ADVICE}"
        )
    return EXIT_FAILED, (
        f"unexpected {type(exc).__name__}: {detail} "
        "(rerun as `taskyard --debug ...` to see the traceback)"
    )


def report_error(ctx: click.Context, exc: Exception) -> int:
    """Print a command's error as one line on stderr (with --debug, its traceback first).

    Returns the exit code: 1 for a refused operation, 3 for an unreachable service.
    """
    state = ctx.ensure_object(State)
    url = state.settings.database_url if state.settings else None
    broker_url = state.settings.broker_url if state.settings else None
    exit_code, message = describe_error(exc, url, broker_url)
    if state.debug:
        click.echo("".join(traceback.format_exception(exc)), err=True, nl=False)
    click.echo(f"error: {' '.join(message.split())}", err=True)
    return exit_code


class Transact(Protocol):
    """Runs a function of a session in one transaction and commits: `run` bound to a face."""

    def __call__(self, work: Callable[[Session], T], /) -> T: ...


def transact(ctx: click.Context) -> Transact:
    """`run` for this invocation, as the functions both faces share take it."""

    def bound(work: Callable[[Session], T], /) -> T:
        return run(ctx, work)

    return bound


def run(ctx: click.Context, work: Callable[[Session], T]) -> T:
    """Run `work` in one transaction on a database at the expected schema, and commit."""
    from db.migrate import check_schema
    from db.session import make_engine, make_session_factory

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


class _Until(_Since):
    """The end of a time range (excluded): an ISO-8601 time or an age like 30m, 6h, 2d."""

    name = "until"


UNTIL = _Until()


def check_time_range(since: dt.datetime | None, until: dt.datetime | None) -> None:
    """Refuse a range whose end (`--until`) is not after its start (`--since`)."""
    if since is not None and until is not None and until <= since:
        raise CommandFailed(
            f"--until ({until.isoformat()}) must be later than --since ({since.isoformat()})"
        )


class _Cursor(click.ParamType):  # type: ignore[type-arg]
    """A cursor one listing gave (`cursor` in its --json output): where its next page starts."""

    name = "cursor"

    def __init__(self, listing: str) -> None:
        self.listing = listing

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, Position):
            return value
        try:
            return decode_cursor(self.listing, str(value))
        except InvalidCursor as exc:
            self.fail(str(exc), param, ctx)


def after_option(listing: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """`--after CURSOR` (or `--cursor`): the next page of `listing`, after the record it names."""
    return click.option(
        "--after",
        "--cursor",
        "after",
        type=_Cursor(listing),
        help="The next page: records after this one (the `cursor` of the last one shown).",
    )


def next_page_hint(infos: Sequence[Mapping[str, Any]]) -> None:
    """Under a full page of a listing: how to ask for the next one."""
    ctx = click.get_current_context(silent=True)
    limit = ctx.params.get("limit") if ctx is not None else None
    if infos and limit is not None and len(infos) >= limit and "cursor" in infos[-1]:
        click.echo(f"more: add --after {infos[-1]['cursor']}")


json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")


def transaction_command(
    group: click.Group,
    name: str,
    render: Callable[[T], None],
    *,
    help: str | None = None,
    cls: type[click.Command] = click.Command,
    quick: Callable[..., Any] | None = None,
) -> Callable[[Callable[..., T]], click.Command]:
    """Make a function of the session and the command's parameters into `group NAME [--json]`.

    The function runs in one transaction (`run`) and what it returns is printed
    by `render`, or as JSON. Its click arguments and options go below this
    decorator; the help is its docstring unless `help` is given.

    `quick`, a function of the context and the same parameters, is tried first: it
    reads without SQLAlchemy (cli/quick.py), or raises `QuickUnavailable` and the
    function runs as above.
    """

    def decorate(work: Callable[..., T]) -> click.Command:
        @functools.wraps(work, updated=())
        @click.pass_context
        def command(ctx: click.Context, /, as_json: bool, **values: Any) -> None:
            emit(_read(ctx, values), as_json, render)

        def _read(ctx: click.Context, values: dict[str, Any]) -> T:
            """Quickly if it can; else through SQLAlchemy, which explains any error."""
            if quick is not None:
                with contextlib.suppress(QuickUnavailable):
                    return quick(ctx, **values)  # type: ignore[no-any-return]
            return run(ctx, lambda session: work(session, **values))

        # The function's own parameters in the order written, then --json, as on every command.
        params = list(reversed(getattr(work, "__click_params__", [])))
        return group.command(name, cls=cls, params=params, help=help)(json_option(command))

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
