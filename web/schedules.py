"""The schedules pages: every schedule with its next and last runs; pause, resume, run now."""

from __future__ import annotations

import datetime as dt
from typing import Any

from flask import Blueprint, redirect, render_template, request, url_for
from sqlalchemy.orm import Session
from werkzeug.wrappers import Response

from services.errors import NotFound
from services.schedules import (
    RunInfo,
    ScheduleInfo,
    get_schedule,
    last_runs,
    list_schedules,
    pause_schedule,
    resume_schedule,
    schedule_info,
)
from web.auth import admin_only
from web.console import attempt, check_sees, console, not_found, operator, scoped_tenant
from web.filters import tenant_param

bp = Blueprint("schedules", __name__)
# The last runs a schedule's own page shows (the list shows `services.schedules.LAST_RUNS`).
RUNS_ON_ITS_PAGE = 50
# The largest id a bigint column holds: a longer number in the URL is no schedule's.
MAX_ID = 2**63 - 1


@bp.route("/schedules")
def schedules() -> str:
    """Schedules, oldest first, with the next run in UTC, in their zone and in the viewer's."""
    tenant_id = tenant_param(request.args)
    if operator().tenant_ids is not None:
        tenant_id = scoped_tenant(tenant_id)

    def read(session: Session) -> list[dict[str, Any]]:
        rows = [schedule_info(session, x) for x in list_schedules(session, tenant_id=tenant_id)]
        runs = last_runs(session, [row["id"] for row in rows])
        return [{**row, "runs": runs[row["id"]]} for row in rows]

    return render_template("schedules.html", rows=console().transact(read), tenant_id=tenant_id)


@bp.route("/schedules/<int:schedule_id>")
def schedule(schedule_id: int) -> str:
    """One schedule: its fields, next run, and its last runs with their jobs' outcome."""
    missing = f"no schedule {schedule_id}"
    if schedule_id > MAX_ID:
        not_found(missing)

    def read(session: Session) -> tuple[ScheduleInfo, list[RunInfo]]:
        try:
            found = get_schedule(session, schedule_id)
        except NotFound:
            not_found(missing)
        check_sees(found.tenant_id, missing)
        info = schedule_info(session, found)
        return info, last_runs(session, [schedule_id], limit=RUNS_ON_ITS_PAGE)[schedule_id]

    info, runs = console().transact(read)
    return render_template("schedule.html", s=info, runs=runs)


def _check(schedule_id: int) -> None:
    """404 unless the schedule exists and the operator may see its tenant."""

    def tenant_of(session: Session) -> int:
        try:
            return get_schedule(session, schedule_id).tenant_id
        except NotFound:
            not_found(f"no schedule {schedule_id}")

    check_sees(console().transact(tenant_of), f"no schedule {schedule_id}")


def _back() -> Response:
    tenant = request.form.get("tenant", "")
    return redirect(url_for("schedules.schedules", tenant=tenant or None))


@bp.route("/schedules/<int:schedule_id>/pause", methods=["POST"])
@admin_only
def pause(schedule_id: int) -> Response:
    """Stop running a schedule until it is resumed (`schedule pause`)."""
    _check(schedule_id)
    c = console()
    attempt(lambda: f"schedule {c.transact(lambda s: pause_schedule(s, schedule_id)).id} paused")
    return _back()


@bp.route("/schedules/<int:schedule_id>/resume", methods=["POST"])
@admin_only
def resume(schedule_id: int) -> Response:
    """Run a paused schedule again from its next slot (`schedule resume`)."""
    _check(schedule_id)
    c = console()
    now = dt.datetime.now(dt.UTC)
    attempt(
        lambda: (
            f"schedule {c.transact(lambda s: resume_schedule(s, schedule_id, now=now)).id} resumed"
        )
    )
    return _back()


@bp.route("/schedules/<int:schedule_id>/run", methods=["POST"])
@admin_only
def run_now(schedule_id: int) -> Response:
    """Send one extra run of a schedule now (`schedule run`)."""
    _check(schedule_id)
    c = console()

    def act() -> str:
        from actors.schedules import run_schedule_now

        message_id = run_schedule_now(schedule_id, broker=c.load_broker())
        return f"schedule {schedule_id} sent as job {message_id}"

    attempt(act)
    return _back()
