"""`taskyard schedule ...`: tenants' cron schedules."""

from __future__ import annotations

import datetime as dt

import click
from sqlalchemy.orm import Session

from cli.common import (
    ID,
    CommandFailed,
    State,
    emit,
    fields_table,
    json_argument,
    json_option,
    main,
    records_table,
    run,
    show,
)
from db.models import CATCH_UP_LATEST, CATCH_UP_MODES
from services.errors import ValidationFailed
from services.schedules import (
    ScheduleInfo,
    create_schedule,
    get_schedule,
    list_schedules,
    pause_schedule,
    remove_schedule,
    resume_schedule,
    schedule_info,
)


@main.group()
def schedule() -> None:
    """Add, list, show, pause, resume, remove and run tenants' schedules."""


def _print_schedule(info: ScheduleInfo) -> None:
    show(fields_table(f"schedule {info['id']}", info))


def _print_schedules(infos: list[ScheduleInfo]) -> None:
    columns = ("id", "tenant_id", "actor", "cron", "timezone", "enabled", "next_slot_at")
    show(records_table(f"schedules ({len(infos)})", columns, infos))


@schedule.command("add")
@click.argument("tenant_id", metavar="TENANT", type=ID)
@click.argument("actor")
@click.option("--cron", required=True, help="Five fields: minute hour day month weekday.")
@click.option("--tz", "timezone", default="UTC", show_default=True, help="An IANA zone.")
@click.option("--args", "raw_args", metavar="JSON", help="The actor's arguments, a JSON object.")
@click.option(
    "--catch-up",
    type=click.Choice(list(CATCH_UP_MODES)),
    default=CATCH_UP_LATEST,
    show_default=True,
    help="Which missed slots run after an outage.",
)
@json_option
@click.pass_context
def schedule_add(
    ctx: click.Context,
    tenant_id: int,
    actor: str,
    cron: str,
    timezone: str,
    raw_args: str | None,
    catch_up: str,
    as_json: bool,
) -> None:
    """Run ACTOR for TENANT on a cron schedule; prints the schedule's id."""
    args = json_argument(raw_args, "--args")
    from actors.schedules import schedulable_actors

    actors = schedulable_actors(ctx.ensure_object(State).load_broker())

    def add(session: Session) -> ScheduleInfo:
        created = create_schedule(
            session,
            tenant_id,
            actor=actor,
            args=args,
            cron=cron,
            actors=actors,
            now=dt.datetime.now(dt.UTC),
            timezone=timezone,
            catch_up=catch_up,
        )
        return schedule_info(session, created)

    try:
        info = run(ctx, add)
    except ValidationFailed as exc:
        raise CommandFailed(
            f"schedule of {actor} for tenant {tenant_id} not added: {exc}; fix that option"
        ) from exc
    emit(info, as_json, lambda i: click.echo(i["id"]))


@schedule.command("list")
@click.option("--tenant", "tenant_id", type=ID, help="Only this tenant's schedules.")
@json_option
@click.pass_context
def schedule_list(ctx: click.Context, tenant_id: int | None, as_json: bool) -> None:
    """List schedules, oldest first."""
    infos = run(
        ctx, lambda s: [schedule_info(s, x) for x in list_schedules(s, tenant_id=tenant_id)]
    )
    emit(infos, as_json, _print_schedules)


@schedule.command("show")
@click.argument("schedule_id", metavar="ID", type=ID)
@json_option
@click.pass_context
def schedule_show(ctx: click.Context, schedule_id: int, as_json: bool) -> None:
    """Show one schedule, and why it does not run if it does not."""
    info = run(ctx, lambda s: schedule_info(s, get_schedule(s, schedule_id)))
    emit(info, as_json, _print_schedule)


@schedule.command("pause")
@click.argument("schedule_id", metavar="ID", type=ID)
@json_option
@click.pass_context
def schedule_pause(ctx: click.Context, schedule_id: int, as_json: bool) -> None:
    """Stop running a schedule until it is resumed."""
    info = run(ctx, lambda s: schedule_info(s, pause_schedule(s, schedule_id)))
    emit(info, as_json, _print_schedule)


@schedule.command("resume")
@click.argument("schedule_id", metavar="ID", type=ID)
@json_option
@click.pass_context
def schedule_resume(ctx: click.Context, schedule_id: int, as_json: bool) -> None:
    """Run a paused schedule again from its next slot (missed slots are not run)."""
    now = dt.datetime.now(dt.UTC)
    info = run(ctx, lambda s: schedule_info(s, resume_schedule(s, schedule_id, now=now)))
    emit(info, as_json, _print_schedule)


@schedule.command("remove")
@click.argument("schedule_id", metavar="ID", type=ID)
@json_option
@click.pass_context
def schedule_remove(ctx: click.Context, schedule_id: int, as_json: bool) -> None:
    """Delete a schedule (its jobs' records stay)."""
    run(ctx, lambda s: remove_schedule(s, schedule_id))
    emit(
        {"removed": schedule_id}, as_json, lambda i: click.echo(f"removed schedule {i['removed']}")
    )


@schedule.command("run")
@click.argument("schedule_id", metavar="ID", type=ID)
@json_option
@click.pass_context
def schedule_run(ctx: click.Context, schedule_id: int, as_json: bool) -> None:
    """Send one extra run of a schedule now; prints its message id."""
    broker = ctx.ensure_object(State).load_broker()
    from actors.base import InvalidArguments
    from actors.schedules import run_schedule_now

    try:
        message_id = run_schedule_now(schedule_id, broker=broker)
    except InvalidArguments as exc:
        raise CommandFailed(f"{exc}: fix them with a new schedule, then remove this one") from exc
    emit(
        {"schedule_id": schedule_id, "message_id": message_id},
        as_json,
        lambda i: click.echo(i["message_id"]),
    )
