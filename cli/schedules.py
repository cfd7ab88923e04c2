"""`taskyard schedule ...`: tenants' cron schedules."""

from __future__ import annotations

import datetime as dt

import click
from sqlalchemy.orm import Session

from cli.common import (
    ID,
    CommandFailed,
    State,
    TenantWasFirst,
    json_argument,
    json_option,
    main,
    remove_command,
    run,
    tenant_option,
    transaction_command,
)
from cli.render import emit, fields_printer, records_printer, value_printer
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


@schedule.command("add", cls=TenantWasFirst)
@tenant_option("The tenant it runs for.", required=True)
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
    """Run ACTOR for a tenant on a cron schedule; prints the schedule's id."""
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
    emit(info, as_json, value_printer("id"))


@transaction_command(
    schedule,
    "list",
    records_printer(
        "schedules", ("id", "tenant_id", "actor", "cron", "timezone", "enabled", "next_slot_at")
    ),
)
@tenant_option("Only this tenant's schedules.")
def schedule_list(session: Session, tenant_id: int | None) -> list[ScheduleInfo]:
    """List schedules, oldest first."""
    return [schedule_info(session, x) for x in list_schedules(session, tenant_id=tenant_id)]


@transaction_command(schedule, "show", fields_printer("schedule"))
@click.argument("schedule_id", metavar="ID", type=ID)
def schedule_show(session: Session, schedule_id: int) -> ScheduleInfo:
    """Show one schedule, and why it does not run if it does not."""
    return schedule_info(session, get_schedule(session, schedule_id))


@transaction_command(schedule, "pause", fields_printer("schedule"))
@click.argument("schedule_id", metavar="ID", type=ID)
def schedule_pause(session: Session, schedule_id: int) -> ScheduleInfo:
    """Stop running a schedule until it is resumed."""
    return schedule_info(session, pause_schedule(session, schedule_id))


@transaction_command(schedule, "resume", fields_printer("schedule"))
@click.argument("schedule_id", metavar="ID", type=ID)
def schedule_resume(session: Session, schedule_id: int) -> ScheduleInfo:
    """Run a paused schedule again from its next slot (missed slots are not run)."""
    now = dt.datetime.now(dt.UTC)
    return schedule_info(session, resume_schedule(session, schedule_id, now=now))


remove_command(
    schedule, "schedule", remove_schedule, help="Delete a schedule (its jobs' records stay)."
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
        value_printer("message_id"),
    )
