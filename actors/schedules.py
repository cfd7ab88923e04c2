"""The scheduler tick and the runtime face of tenants' schedules.

`scheduler_tick` lives here, not in schedules.py, because `dramatiq actors`
imports only this package and every worker must know an actor to run it.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from typing import Any, TypedDict

import dramatiq
from dramatiq import Message
from dramatiq.broker import Broker

from actors.base import InvalidArguments, taskyard_actor
from actors.transaction import taskyard_transaction
from middleware import current_session
from middleware.context import current_context
from middleware.outbox_rows import SCHEDULE_OPTION, SLOT_OPTION
from services.cron import periodic
from services.schedule_slots import DueRun, claim_due_slots, claim_run_now
from services.schedules import ActorSchemas

logger = logging.getLogger(__name__)

# Every minute, UTC: a schedule's finest slot is a minute.
SCHEDULER_TICK_CRON = "* * * * *"


class TickResult(TypedDict):
    """What `scheduler_tick` leaves on its job record."""

    now: str
    sent: int
    refused: int


def schedulable_actors(broker: Broker | None = None) -> ActorSchemas:
    """The actors a schedule may name (tenant-scoped ones), with their argument schemas."""
    broker = broker or dramatiq.get_broker()
    return {
        name: broker.get_actor(name).options.get("schema")
        for name in broker.get_declared_actors()
        if broker.get_actor(name).options.get("tenant_scoped")
    }


def send_due_runs(broker: Broker, runs: Sequence[DueRun]) -> list[Message[Any]]:
    """Send the job of every claimed slot, carrying its schedule id and slot time.

    In a transaction (the tick's), the sends are held and written to the outbox
    with the claims.  A schedule whose arguments its actor no longer accepts is
    logged and left out; the other schedules still run.
    """
    ctx = current_context()
    if ctx is not None:
        # The claims were made for active tenants only: no lookup per send.
        ctx.tenants_known.update(run["tenant_id"] for run in runs)
    sent: list[Message[Any]] = []
    for run in runs:
        try:
            options: dict[str, Any] = {
                SCHEDULE_OPTION: run["schedule_id"],
                SLOT_OPTION: run["slot_at"].isoformat(),
            }
            message = broker.get_actor(run["actor"]).send_with_options(
                kwargs={**run["args"], "tenant_id": run["tenant_id"]}, **options
            )
        except InvalidArguments as exc:
            logger.error(
                "Schedule %s not sent for slot %s: %s",
                run["schedule_id"],
                run["slot_at"].isoformat(),
                exc,
                extra={"tenant_id": run["tenant_id"], "actor": run["actor"]},
            )
            continue
        sent.append(message)
    return sent


@taskyard_actor(name="scheduler_tick", tenant_scoped=False, periodic=periodic(SCHEDULER_TICK_CRON))
def scheduler_tick() -> TickResult:
    """Claim and send every slot due since the last tick, in one transaction with the claims."""
    broker = dramatiq.get_broker()
    now = dt.datetime.now(dt.UTC)
    runs = claim_due_slots(current_session(), now=now, actors=schedulable_actors(broker))
    sent = send_due_runs(broker, runs)
    return {"now": now.isoformat(), "sent": len(sent), "refused": len(runs) - len(sent)}


def run_schedule_now(
    schedule_id: int, *, broker: Broker | None = None, now: dt.datetime | None = None
) -> str:
    """Send one extra run of a schedule now, whatever its cron says; returns the message id."""
    broker = broker or dramatiq.get_broker()
    with taskyard_transaction(broker) as session:
        run = claim_run_now(session, schedule_id, now=now or dt.datetime.now(dt.UTC))
        sent = send_due_runs(broker, [run])
    if not sent:
        raise InvalidArguments(f"schedule {schedule_id}: its actor refuses its arguments")
    return sent[0].message_id
