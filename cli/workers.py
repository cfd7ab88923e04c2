"""`taskyard workers` and `taskyard health`: what runs, and whether it all works."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from typing import NotRequired, TypedDict

import click
import pika
import pika.exceptions
from sqlalchemy import text

from cli.common import EXIT_FAILED, State, json_option, main, run, shown_broker_url, shown_url
from cli.render import duration, emit, records_table, show
from db.migrate import check_schema
from db.session import make_engine
from services.job_views import stale_window
from services.store import StoreStats, store_stats
from services.workers import (
    WorkerInfo,
    last_scheduler_tick,
    list_workers,
    unserved_tenants,
)
from settings import Settings

# The scheduler ticks every minute; two minutes allows one late or lost tick.
SCHEDULER_FRESH_SECONDS = 120
# `health` is a probe: a server that does not answer within this is down.
PROBE_TIMEOUT_SECONDS = 5


WORKER_COLUMNS = (
    "host", "pid", "kind", "queues", "threads", "in_progress", "heartbeat_at", "live",
)  # fmt: skip
RUNNING_COLUMNS = ("host", "pid", "thread", "actor", "message_id", "tenant_id", "running_for")


def _stale_after(settings: Settings) -> dt.timedelta:
    return stale_window(settings.heartbeat_seconds)


def _print_workers(infos: Sequence[WorkerInfo]) -> None:
    """The workers, then what the threads of the live ones run, as of their last beat."""
    running = [
        {**job, "running_for": duration(job["running_seconds"])}
        for info in infos
        if info["live"]
        for job in info["running"]
    ]
    tables = [records_table(f"workers ({len(infos)})", WORKER_COLUMNS, infos)]
    if running:
        tables.append(records_table(f"running now ({len(running)})", RUNNING_COLUMNS, running))
    show(*tables)


@main.command()
@click.option("--stale", "include_stale", is_flag=True, help="Also show silent workers.")
@json_option
@click.pass_context
def workers(ctx: click.Context, include_stale: bool, as_json: bool) -> None:
    """List the live worker processes: host, pid, queues, threads, and what each thread runs.

    What runs comes from each worker's heartbeat (every TASKYARD_HEARTBEAT_SECONDS):
    a job started less than one beat ago is not listed yet.
    """
    stale_after = _stale_after(ctx.ensure_object(State).load_settings())
    now = dt.datetime.now(dt.UTC)
    infos = run(
        ctx,
        lambda s: list_workers(s, now=now, stale_after=stale_after, include_stale=include_stale),
    )
    emit(infos, as_json, _print_workers)


class Check(TypedDict):
    """One line of `taskyard health`; the `store` line carries every table's figures."""

    check: str
    ok: bool
    detail: str
    store: NotRequired[StoreStats]


class _CheckFailed(Exception):
    """A check that failed and says why in its own words."""


def _check_broker(settings: Settings) -> str:
    params = pika.URLParameters(settings.broker_url)
    params.socket_timeout = PROBE_TIMEOUT_SECONDS
    params.blocked_connection_timeout = PROBE_TIMEOUT_SECONDS
    params.connection_attempts = 1
    where = shown_broker_url(settings.broker_url)
    try:
        pika.BlockingConnection(params).close()
    except pika.exceptions.AMQPError as exc:
        raise _CheckFailed(
            f"{where} does not answer ({type(exc).__name__}): check BROKER_URL"
        ) from exc
    return f"{where} answers"


def _check_database(settings: Settings) -> str:
    engine = make_engine(settings)
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    finally:
        engine.dispose()
    return f"{shown_url(settings.database_url)} answers"


def _check_schema(settings: Settings) -> str:
    engine = make_engine(settings)
    try:
        check_schema(engine)
    finally:
        engine.dispose()
    return "the schema is at the code's revision"


def _fresh_workers(ctx: click.Context, settings: Settings) -> str:
    now = dt.datetime.now(dt.UTC)
    live = run(ctx, lambda s: list_workers(s, now=now, stale_after=_stale_after(settings)))
    if not live:
        raise _CheckFailed(
            f"no worker heartbeat in the last {_stale_after(settings).total_seconds():g} s: "
            "start one with `dramatiq actors`"
        )
    unserved = run(
        ctx,
        lambda s: unserved_tenants(
            s, now=now, stale_after=_stale_after(settings), queue_prefix=settings.queue_prefix
        ),
    )
    if unserved:
        shown = ", ".join(map(str, unserved[:10])) + (" ..." if len(unserved) > 10 else "")
        raise _CheckFailed(
            f"{len(live)} live worker(s), but {len(unserved)} tenant(s) have none serving "
            f"their queue ({shown}): their jobs wait in RabbitMQ, nothing is lost; start a "
            "worker that serves them (TASKYARD_TENANTS including them, or unset)"
        )
    return f"{len(live)} live worker(s)"


def _fresh_tick(ctx: click.Context) -> str:
    last = run(ctx, last_scheduler_tick)
    if last is None:
        raise _CheckFailed("no scheduler tick ever ran: start `periodiq actors` and a worker")
    age = (dt.datetime.now(dt.UTC) - last).total_seconds()
    if age > SCHEDULER_FRESH_SECONDS:
        raise _CheckFailed(f"the last scheduler tick finished {age:.0f} s ago: is periodiq up?")
    return f"the last tick finished {age:.0f} s ago"


def size(value: int | None) -> str:
    """Bytes for a person: 512 B, 3.2 MiB, 41.0 GiB."""
    if value is None:
        return "-"
    amount = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if amount < 1024 or unit == "GiB":
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    return f"{amount:.1f} TiB"


def _store_detail(stats: StoreStats) -> str:
    """The store line: the job records' size and age, and those stuck past retention."""
    jobs = next(t for t in stats["tables"] if t["table"] == "jobs")
    total = None
    if jobs["heap_bytes"] is not None:
        total = jobs["heap_bytes"] + (jobs["index_bytes"] or 0)
    age = jobs["oldest_age_seconds"]
    oldest = f", the oldest sent {duration(age)} ago" if age is not None else ""
    lag = jobs["retention_lag_seconds"]
    if lag:
        oldest += f" ({duration(lag)} past the retention)"
    stuck = f"{stats['stuck_jobs']:,}{'+' if stats['stuck_capped'] else ''}"
    return (
        f"jobs: about {jobs['rows']:,} records, "
        f"{size(total) if total is not None else 'size unknown'}{oldest}; {stuck} stuck "
        f"(queued or retrying, sent over {stats['retention_days']} d ago: "
        "TASKYARD_JOB_RETENTION_DAYS)"
    )


STORE_COLUMNS = ("table", "rows", "heap", "indexes", "oldest", "retention", "lag")


def _print_store(stats: StoreStats) -> None:
    rows = [
        {
            "table": t["table"],
            "rows": f"{t['rows']:,}",
            "heap": size(t["heap_bytes"]),
            "indexes": size(t["index_bytes"]),
            "oldest": duration(t["oldest_age_seconds"])
            if t["oldest_age_seconds"] is not None
            else None,
            "retention": duration(t["retention_seconds"])
            if t["retention_seconds"] is not None
            else None,
            "lag": duration(t["retention_lag_seconds"])
            if t["retention_lag_seconds"] is not None
            else None,
        }
        for t in stats["tables"]
    ]
    show(records_table("tables (rows: an estimate)", STORE_COLUMNS, rows))


def _first_line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _store_check(ctx: click.Context, settings: Settings) -> Check:
    retention = settings.job_retention_days
    try:
        stats = run(ctx, lambda s: store_stats(s.connection(), retention_days=retention))
    except Exception as exc:
        return {
            "check": "store",
            "ok": False,
            "detail": f"{type(exc).__name__}: {_first_line(exc)}",
        }
    return {"check": "store", "ok": True, "detail": _store_detail(stats), "store": stats}


def _print_checks(checks: list[Check]) -> None:
    for check in checks:
        mark = "ok  " if check["ok"] else "FAIL"
        click.echo(f"{mark} {check['check']:<10} {check['detail']}")
    for check in checks:
        if "store" in check:
            _print_store(check["store"])


@main.command()
@json_option
@click.pass_context
def health(ctx: click.Context, as_json: bool) -> None:
    """Check the broker, the database, its schema, the workers and the scheduler; exit 0 if ok.

    Then the store: each table's rows, size and oldest record, how far past its
    retention that record is (lag), and the job records stuck (queued or retrying)
    past TASKYARD_JOB_RETENTION_DAYS.  Stuck records are
    reported, not a failure: the probe answers for what runs now.
    """
    settings = ctx.ensure_object(State).load_settings()
    probes: list[tuple[str, Callable[[], str]]] = [
        ("broker", lambda: _check_broker(settings)),
        ("database", lambda: _check_database(settings)),
        ("schema", lambda: _check_schema(settings)),
        ("workers", lambda: _fresh_workers(ctx, settings)),
        ("scheduler", lambda: _fresh_tick(ctx)),
    ]
    checks: list[Check] = []
    for name, probe in probes:
        # Checks after a database failure would only repeat it.
        if name in ("schema", "workers", "scheduler") and not all(
            c["ok"] for c in checks if c["check"] in ("database", "schema")
        ):
            checks.append({"check": name, "ok": False, "detail": "skipped: database not usable"})
            continue
        try:
            checks.append({"check": name, "ok": True, "detail": probe()})
        except Exception as exc:
            detail = (
                str(exc)
                if isinstance(exc, _CheckFailed)
                else f"{type(exc).__name__}: {_first_line(exc)}"
            )
            checks.append({"check": name, "ok": False, "detail": detail})
    if all(c["ok"] for c in checks if c["check"] in ("database", "schema")):
        checks.append(_store_check(ctx, settings))
    emit(checks, as_json, _print_checks)
    if not all(check["ok"] for check in checks):
        ctx.exit(EXIT_FAILED)
