"""The operator's command line: migrate the database, manage tenants, read ingests and jobs."""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypedDict, TypeVar

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text
from sqlalchemy import make_url
from sqlalchemy.exc import OperationalError, ProgrammingError
from sqlalchemy.orm import Session

from db.migrate import MIGRATE_ADVICE, SchemaBehind, check_schema, ensure_database, upgrade_to_head
from db.models import (
    JOB_FINAL_STATES,
    JOB_QUEUED,
    JOB_RETRYING,
    JOB_RUNNING,
    TENANT_ACTIVE,
    TENANT_DISABLED,
)
from db.session import make_engine, make_session_factory
from services.errors import TaskyardError, UnknownTenant
from services.ingest import IngestSummary, get_ingest
from services.jobs import JobInfo, get_job, job_info, list_jobs
from services.tenants import (
    TenantInfo,
    create_tenant,
    get_tenant,
    list_tenants,
    set_tenant_status,
    tenant_info,
)
from settings import Settings, SettingsError, load_settings

T = TypeVar("T")

EXIT_FAILED = 1
# 2 is click's own exit code for a usage error (unknown option, invalid argument).
EXIT_UNREACHABLE = 3


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
# Piped output (grep, less) keeps one row per line instead of wrapping at 80 columns.
PIPED_WIDTH = 250


@dataclass
class _State:
    """What one invocation shares between the group and its command."""

    debug: bool = False
    settings: Settings | None = None

    def load_settings(self) -> Settings:
        """The settings, read from the environment once per invocation."""
        if self.settings is None:
            self.settings = load_settings()
        return self.settings


def shown_url(database_url: str) -> str:
    """The database URL with its password hidden."""
    return make_url(database_url).render_as_string(hide_password=True)


def _first_line(exc: BaseException | None) -> str:
    lines = str(exc).strip().splitlines() if exc is not None else []
    return lines[0].strip() if lines else type(exc).__name__


def describe_error(exc: Exception, database_url: str | None) -> tuple[int, str]:
    """The exit code and the one-line message for an error that reached the command line."""
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
            state = ctx.ensure_object(_State)
            url = state.settings.database_url if state.settings else None
            exit_code, message = describe_error(exc, url)
            if state.debug:
                click.echo("".join(traceback.format_exception(exc)), err=True, nl=False)
            click.echo(f"error: {' '.join(message.split())}", err=True)
            ctx.exit(exit_code)


def _run(ctx: click.Context, work: Callable[[Session], T]) -> T:
    """Run `work` in one transaction on a database at the expected schema, and commit."""
    settings = ctx.ensure_object(_State).load_settings()
    engine = make_engine(settings)
    try:
        check_schema(engine)
        with make_session_factory(engine).begin() as session:
            return work(session)
    finally:
        engine.dispose()


def _emit(data: T, as_json: bool, render: Callable[[T], None]) -> None:
    """Print `data` as one JSON document, or for a person."""
    if as_json:
        click.echo(json.dumps(data, default=str, indent=2))
    else:
        render(data)


def _print(*renderables: Any) -> None:
    width = None if sys.stdout.isatty() else PIPED_WIDTH
    Console(width=width, highlight=False).print(*renderables)


def _cell(value: object) -> Text:
    # Text, not str: a name like "[bold]x" must not be read as rich markup.
    if value is None:
        return Text("-")
    if isinstance(value, dict | list):
        return Text(json.dumps(value, default=str))
    return Text(str(value))


def _fields(title: str, data: Mapping[str, object]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for key, value in data.items():
        table.add_row(key, _cell(value))
    return table


def _records(title: str, columns: Sequence[str], records: Iterable[Mapping[str, object]]) -> Table:
    table = Table(*columns, title=title, title_justify="left")
    for record in records:
        table.add_row(*(_cell(record[column]) for column in columns))
    return table


json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")


@click.group(
    cls=_Taskyard, name="taskyard", context_settings={"help_option_names": ["-h", "--help"]}
)
@click.option("--debug", is_flag=True, help="Show the traceback of an error.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Taskyard's operator tool: the database, tenants, ingests and jobs."""
    ctx.obj = _State(debug=debug)


class MigrateInfo(TypedDict):
    """What `taskyard migrate` did."""

    database: str | None
    url: str
    created: bool
    revision: str


def _print_migrate(info: MigrateInfo) -> None:
    created = "created and " if info["created"] else ""
    click.echo(f"database {info['database']} {created}is at revision {info['revision']}")


@main.command()
@json_option
@click.pass_context
def migrate(ctx: click.Context, as_json: bool) -> None:
    """Create the database if missing and bring its schema up to date."""
    url = ctx.ensure_object(_State).load_settings().database_url
    created = ensure_database(url)
    revision = upgrade_to_head(url)
    info: MigrateInfo = {
        "database": make_url(url).database,
        "url": shown_url(url),
        "created": created,
        "revision": revision,
    }
    _emit(info, as_json, _print_migrate)


@main.group()
def tenant() -> None:
    """Create, list, show, enable and disable tenants."""


def _print_tenant(info: TenantInfo) -> None:
    _print(_fields(f"tenant {info['id']}", info))


def _print_tenants(infos: list[TenantInfo]) -> None:
    columns = ("id", "name", "status", "created_at")
    _print(_records(f"tenants ({len(infos)})", columns, infos))


@tenant.command("create")
@click.argument("name")
@json_option
@click.pass_context
def tenant_create(ctx: click.Context, name: str, as_json: bool) -> None:
    """Create an active tenant NAME and print its id."""
    info = _run(ctx, lambda s: tenant_info(create_tenant(s, name)))
    _emit(info, as_json, lambda i: click.echo(i["id"]))


@tenant.command("list")
@click.option("--status", type=click.Choice([TENANT_ACTIVE, TENANT_DISABLED]))
@json_option
@click.pass_context
def tenant_list(ctx: click.Context, status: str | None, as_json: bool) -> None:
    """List the tenants, oldest first."""
    infos = _run(ctx, lambda s: [tenant_info(t) for t in list_tenants(s, status=status)])
    _emit(infos, as_json, _print_tenants)


@tenant.command("show")
@click.argument("tenant_id", metavar="ID", type=ID)
@json_option
@click.pass_context
def tenant_show(ctx: click.Context, tenant_id: int, as_json: bool) -> None:
    """Show one tenant."""
    _emit(_run(ctx, lambda s: tenant_info(get_tenant(s, tenant_id))), as_json, _print_tenant)


def _status_command(name: str, status: str) -> None:
    @tenant.command(name, help=f"Mark tenant ID {status}, and show it.")
    @click.argument("tenant_id", metavar="ID", type=ID)
    @json_option
    @click.pass_context
    def command(ctx: click.Context, tenant_id: int, as_json: bool) -> None:
        info = _run(ctx, lambda s: tenant_info(set_tenant_status(s, tenant_id, status)))
        _emit(info, as_json, _print_tenant)


_status_command("disable", TENANT_DISABLED)
_status_command("enable", TENANT_ACTIVE)


@main.group()
def ingest() -> None:
    """Read the record of resource-feed ingests."""


def _print_ingest(summary: IngestSummary) -> None:
    counts = {k: v for k, v in summary.items() if not k.startswith("items_")}
    tables = [_fields(f"ingest {summary['id']}", counts)]
    for kind, total, problems in (
        ("rejected", summary["rejected"], summary["items_rejected"]),
        ("failed", summary["failed"], summary["items_failed"]),
    ):
        if problems:
            title = f"{kind} items ({len(problems)} of {total})"
            tables.append(_records(title, ("position", "resource_id", "error"), problems))
    _print(*tables)


@ingest.command("show")
@click.argument("ingest_id", metavar="INGEST_ID", type=ID)
@click.option("--tenant", "tenant_id", type=ID, help="Only if the ingest is this tenant's.")
@json_option
@click.pass_context
def ingest_show(ctx: click.Context, ingest_id: int, tenant_id: int | None, as_json: bool) -> None:
    """Show one ingest: its counts and its rejected and failed items."""
    summary = _run(ctx, lambda s: get_ingest(s, ingest_id, tenant_id=tenant_id))
    _emit(summary, as_json, _print_ingest)


@main.group()
def jobs() -> None:
    """Read the record of jobs (one per message)."""


def _print_jobs(infos: list[JobInfo]) -> None:
    columns = ("message_id", "tenant_id", "actor", "status", "attempts", "finished_at")
    _print(_records(f"jobs ({len(infos)})", columns, infos))


@jobs.command("show")
@click.argument("message_id")
@json_option
@click.pass_context
def jobs_show(ctx: click.Context, message_id: str, as_json: bool) -> None:
    """Show the record of one message."""
    info = _run(ctx, lambda s: job_info(get_job(s, message_id)))
    _emit(info, as_json, lambda i: _print(_fields(f"job {i['message_id']}", i)))


@jobs.command("list")
@click.option("--tenant", "tenant_id", type=ID, help="Only this tenant's jobs.")
@click.option("--status", type=click.Choice(JOB_STATES), help="Only jobs in this state.")
@click.option("--actor", help="Only this actor's jobs.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@json_option
@click.pass_context
def jobs_list(
    ctx: click.Context,
    tenant_id: int | None,
    status: str | None,
    actor: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """List job records, the most recently updated first."""
    infos = _run(
        ctx,
        lambda s: [
            job_info(j)
            for j in list_jobs(s, tenant_id=tenant_id, status=status, actor=actor, limit=limit)
        ],
    )
    _emit(infos, as_json, _print_jobs)


if __name__ == "__main__":
    main(prog_name="taskyard")
