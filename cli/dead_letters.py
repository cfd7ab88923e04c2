"""`taskyard dead-letters ...`: list, show, requeue and purge the messages that died."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any, TypedDict, TypeVar

import click
import dramatiq
from dramatiq.broker import Broker
from sqlalchemy.orm import Session

from cli.common import (
    SINCE,
    UNTIL,
    CommandFailed,
    State,
    Transact,
    after_option,
    check_time_range,
    json_option,
    limit_option,
    main,
    next_page_hint,
    run,
    tenant_option,
    transact,
    transaction_command,
)
from cli.render import emit, fields_printer, progress, records_printer
from services.dead_letters import (
    DEAD_LETTERS_LISTING,
    REQUEUE_BATCH,
    DeadLetterFilter,
    DeadLetterInfo,
    count_requeueable,
    dead_letter_cursor,
    dead_letter_info,
    get_dead_letter,
    list_dead_letters,
    purge_dead_letters,
    take_for_requeue,
)
from services.pagination import Position
from services.redaction import redact_value
from transport.rabbitmq import publish_now

F = TypeVar("F", bound=Callable[..., Any])


def requeue(
    ctx: click.Context,
    *,
    message_id: str | None = None,
    flt: DeadLetterFilter | None = None,
    on_batch: Callable[[int], None] = lambda n: None,
) -> list[str]:
    """`requeue_dead_letters` for this invocation, on its broker and database."""
    broker = ctx.ensure_object(State).load_broker()
    return requeue_dead_letters(
        transact(ctx), broker, message_id=message_id, flt=flt, on_batch=on_batch
    )


def requeue_dead_letters(
    run_in_transaction: Transact,
    broker: Broker,
    *,
    message_id: str | None = None,
    flt: DeadLetterFilter | None = None,
    on_batch: Callable[[int], None] = lambda n: None,
) -> list[str]:
    """Requeue one dead letter or every one matching `flt`, a batch per transaction; their ids.

    Each message is published before its batch commits, so a broker that is
    down rolls the batch back and the dead letters stay to be requeued later.
    The command line and the web console both requeue through this.
    """
    requeued: list[str] = []

    def batch(session: Session) -> list[str]:
        messages = take_for_requeue(session, message_id=message_id, flt=flt)
        for data in messages:
            publish_now(broker, dramatiq.Message(**data))
        return [str(data["message_id"]) for data in messages]

    while True:
        ids = run_in_transaction(batch)
        requeued += ids
        on_batch(len(ids))
        if message_id is not None or len(ids) < REQUEUE_BATCH:
            return requeued


def filter_options(command: F) -> F:
    """The filters `list`, `requeue --all` and `purge` share."""
    for option in reversed(
        [
            tenant_option("Only this tenant's."),
            click.option("--actor", help="Only this actor's."),
            click.option("--reason", help="Only those dead for this reason (e.g. fetch_refused)."),
            click.option("--since", type=SINCE, help="Only those dead since (2d, 6h, ISO time)."),
            click.option("--until", type=UNTIL, help="Only those dead before (2d, 6h, ISO time)."),
            click.option(
                "--error",
                "error_contains",
                help="Only those whose error contains this text (any case).",
            ),
        ]
    ):
        command = option(command)
    return command


def letter_filter(
    tenant_id: int | None,
    actor: str | None,
    reason: str | None,
    since: dt.datetime | None,
    until: dt.datetime | None,
    error_contains: str | None,
    include_requeued: bool = False,
) -> DeadLetterFilter:
    """The filter `filter_options` give (list, requeue --all, purge), its range checked."""
    check_time_range(since, until)
    return DeadLetterFilter(
        tenant_id,
        actor,
        reason,
        since,
        include_requeued,
        error_contains=error_contains,
        until=until,
    )


@main.group("dead-letters")
def dead_letters() -> None:
    """List, show, requeue and purge dead letters (messages that failed for good)."""


_print_dead_letters = records_printer(
    "dead letters", ("message_id", "tenant_id", "actor", "reason", "attempts", "created_at")
)


def _print_listing(infos: list[DeadLetterInfo]) -> None:
    _print_dead_letters(infos)
    next_page_hint(infos)


@transaction_command(dead_letters, "list", _print_listing)
@filter_options
@click.option("--requeued", "include_requeued", is_flag=True, help="Include requeued ones.")
@limit_option(100)
@after_option(DEAD_LETTERS_LISTING)
def dead_letters_list(
    session: Session,
    tenant_id: int | None,
    actor: str | None,
    reason: str | None,
    since: dt.datetime | None,
    until: dt.datetime | None,
    error_contains: str | None,
    include_requeued: bool,
    limit: int,
    after: Position | None,
) -> list[DeadLetterInfo]:
    """List dead letters, the newest first; --after CURSOR for the next page."""
    flt = letter_filter(tenant_id, actor, reason, since, until, error_contains, include_requeued)
    return [
        redact_value(dead_letter_info(d) | {"cursor": dead_letter_cursor(d)})
        for d in list_dead_letters(session, flt, after=after, limit=limit)
    ]


@transaction_command(dead_letters, "show", fields_printer("dead letter", "message_id"))
@click.argument("message_id")
def dead_letters_show(session: Session, message_id: str) -> DeadLetterInfo:
    """Show one dead letter: why it died, its message and its error (secrets redacted)."""
    shown: DeadLetterInfo = redact_value(dead_letter_info(get_dead_letter(session, message_id)))
    return shown


class RequeueInfo(TypedDict):
    """What `taskyard dead-letters requeue` sent again."""

    requeued: int
    message_ids: list[str]


@dead_letters.command("requeue")
@click.argument("message_id", required=False)
@click.option("--all", "every", is_flag=True, help="Every dead letter matching the filters.")
@filter_options
@json_option
@click.pass_context
def dead_letters_requeue(
    ctx: click.Context,
    message_id: str | None,
    every: bool,
    tenant_id: int | None,
    actor: str | None,
    reason: str | None,
    since: dt.datetime | None,
    until: dt.datetime | None,
    error_contains: str | None,
    as_json: bool,
) -> None:
    """Send MESSAGE_ID (or --all matching the filters) again, from its first attempt."""
    filtered = any(v is not None for v in (tenant_id, actor, reason, since, until, error_contains))
    if (message_id is None) == (not every) or (message_id is not None and filtered):
        raise click.UsageError("give either MESSAGE_ID or --all (with optional filters)")
    if message_id is not None:
        ids = requeue(ctx, message_id=message_id)
    else:
        flt = letter_filter(tenant_id, actor, reason, since, until, error_contains)
        total = run(ctx, lambda s: count_requeueable(s, flt))
        with progress(total, "requeueing dead letters", quiet=as_json) as advance:
            ids = requeue(ctx, flt=flt, on_batch=advance)
    info: RequeueInfo = {"requeued": len(ids), "message_ids": ids}
    emit(info, as_json, lambda i: click.echo(f"requeued {i['requeued']} dead letter(s)"))


@dead_letters.command("purge")
@filter_options
@click.option("--requeued", "include_requeued", is_flag=True, help="Include requeued ones.")
@click.option("--yes", is_flag=True, help="Purge even when no filter narrows it down.")
@json_option
@click.pass_context
def dead_letters_purge(
    ctx: click.Context,
    tenant_id: int | None,
    actor: str | None,
    reason: str | None,
    since: dt.datetime | None,
    until: dt.datetime | None,
    error_contains: str | None,
    include_requeued: bool,
    yes: bool,
    as_json: bool,
) -> None:
    """Delete the dead letters matching the filters (all of them needs --yes)."""
    if all(v is None for v in (tenant_id, actor, reason, since, until, error_contains)) and not yes:
        raise CommandFailed(
            "purge without --tenant, --actor, --reason, --since, --until or --error deletes "
            "every dead letter: "
            "add --yes if that is what you mean"
        )
    flt = letter_filter(tenant_id, actor, reason, since, until, error_contains, include_requeued)
    purged = run(ctx, lambda s: purge_dead_letters(s, flt))
    emit({"purged": purged}, as_json, lambda i: click.echo(f"purged {i['purged']} dead letter(s)"))
