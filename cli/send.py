"""`taskyard send ACTOR --tenant ID`: send one job by hand, its arguments checked first."""

from __future__ import annotations

import click

from cli.common import (
    Bounded,
    CommandFailed,
    State,
    json_argument,
    json_option,
    main,
    shown_broker_url,
    tenant_option,
)
from cli.render import emit, value_printer
from middleware.runtime import runtime_of

# How long `send` waits for RabbitMQ to take the job before it says it has not (yet).
PUBLISH_WAIT_SECONDS = 5.0
# The longest `--delay`: a year.
MAX_DELAY_SECONDS = 365 * 86400


@main.command()
@click.argument("actor")
@tenant_option("The tenant it runs for.", required=True)
@click.option("--args", "raw_args", metavar="JSON", help="The actor's arguments, a JSON object.")
@click.option(
    "--delay",
    type=Bounded(float, 0, MAX_DELAY_SECONDS, "delay"),
    metavar="SECONDS",
    help="Seconds to wait before it runs (up to a year).",
)
@json_option
@click.pass_context
def send(
    ctx: click.Context,
    actor: str,
    tenant_id: int,
    raw_args: str | None,
    delay: float | None,
    as_json: bool,
) -> None:
    """Send one job of a tenant-scoped ACTOR; prints its message id."""
    args = json_argument(raw_args, "--args")
    if "tenant_id" in args and args["tenant_id"] != tenant_id:
        raise CommandFailed(
            f"--args names tenant {args['tenant_id']!r} but --tenant is {tenant_id}"
        )
    broker = ctx.ensure_object(State).load_broker()
    from actors.base import InvalidArguments

    scoped = sorted(
        name
        for name in broker.get_declared_actors()
        if broker.get_actor(name).options.get("tenant_scoped")
    )
    if actor not in scoped:
        raise CommandFailed(f"no tenant-scoped actor {actor!r}: send one of {', '.join(scoped)}")
    delay_ms = None if delay is None else int(delay * 1000)
    runtime = runtime_of(broker)
    outbox = runtime.outbox if runtime is not None else None
    failed_before = outbox.clearer.failed_total if outbox is not None else 0
    try:
        message = broker.get_actor(actor).send_with_options(
            kwargs={**args, "tenant_id": tenant_id}, delay=delay_ms
        )
    except InvalidArguments as exc:
        raise CommandFailed(
            f"{exc}: docs/reference/actors.md lists each actor's arguments"
        ) from exc
    # The send is durable already; wait a moment for RabbitMQ to take it, to say if not.
    if outbox is not None:
        settled = outbox.clearer.flush(PUBLISH_WAIT_SECONDS)
        if not settled or outbox.clearer.failed_total > failed_before:
            settings = ctx.ensure_object(State).load_settings()
            click.echo(
                f"warning: RabbitMQ at {shown_broker_url(settings.broker_url)} has not taken "
                f"job {message.message_id} yet; it is kept in PostgreSQL, and a worker's outbox "
                "sweeper publishes it once RabbitMQ answers",
                err=True,
            )
    emit(
        {"message_id": message.message_id, "actor": actor, "tenant_id": tenant_id},
        as_json,
        value_printer("message_id"),
    )
