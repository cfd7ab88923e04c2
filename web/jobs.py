"""The jobs pages: the command line's listing with its filters and keyset pages; one job; acts."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, redirect, render_template, request, url_for
from sqlalchemy.orm import Session
from werkzeug.wrappers import Response

from cli.common import JOB_STATES, CommandFailed
from cli.jobs import job_detail, job_listing, retry_job
from db.models import DeadLetter
from services.dead_letters import dead_letter_info
from services.errors import NotFound
from services.job_control import cancel_job
from services.job_views import JOBS_LISTING
from services.jobs import JobsOnSession, get_job
from web.auth import admin_only
from web.console import attempt, check_sees, console, not_found, scoped_tenant
from web.filters import (
    bad_request,
    choice_param,
    cursor_param,
    limit_param,
    tenant_param,
    text_param,
    time_range_params,
)

bp = Blueprint("jobs", __name__)
# Longer than any message id Taskyard keeps (the column's width).
MAX_MESSAGE_ID = 64


@bp.route("/jobs")
def jobs() -> str:
    """Job records, newest first, filtered as `taskyard jobs list` filters them."""
    args = request.args
    tenant_id = scoped_tenant(tenant_param(args))
    status = choice_param(args, "status", JOB_STATES)
    actor = text_param(args, "actor")
    since, until = time_range_params(args)
    error_contains = text_param(args, "error")
    after = cursor_param(args, JOBS_LISTING)
    limit = limit_param(args)
    c = console()

    def read(session: Session) -> list[Any]:
        try:
            found = job_listing(
                JobsOnSession(session),
                stale_after=c.stale_after,
                tenant_id=tenant_id,
                status=status,
                actor=actor,
                since=since,
                until=until,
                after=after,
                limit=limit,
                error_contains=error_contains,
            )
        except CommandFailed as exc:
            words = str(exc).replace("--after", "a next page").replace("--limit", "limit")
            bad_request(words.replace("--error", "error").replace("--status", "status"))
            raise
        return list(found)

    rows = c.transact(read)
    last = rows[-1].get("cursor") if rows and len(rows) >= limit else None
    filters: dict[str, Any] = {k: v for k, v in args.items() if k != "after" and v}
    return render_template(
        "jobs.html",
        rows=rows,
        filters=filters,
        states=JOB_STATES,
        tenant_id=tenant_id,
        next_page=url_for("jobs.jobs", **filters, after=last) if last else None,
    )


def _checked_id(message_id: str) -> str:
    if len(message_id) > MAX_MESSAGE_ID:
        not_found("no such job")
    return message_id


def _read_job(session: Session, message_id: str) -> dict[str, Any]:
    try:
        info: dict[str, Any] = dict(
            job_detail(session, message_id, stale_after=console().stale_after)
        )
    except NotFound:
        not_found(f"no job record for message {message_id!r}")
    check_sees(info["tenant_id"], f"no job record for message {message_id!r}")
    letter = session.get(DeadLetter, message_id)
    info["dead_letter"] = dead_letter_info(letter) if letter is not None else None
    return info


@bp.route("/jobs/<message_id>")
def job(message_id: str) -> str:
    """One job: its arguments, result, error, its dead letter's traceback, and what to do."""
    info = console().transact(lambda s: _read_job(s, _checked_id(message_id)))
    return render_template("job.html", job=info)


def _check_job(message_id: str) -> None:
    """404 unless the job exists and the operator may see its tenant."""

    def tenant_of(session: Session) -> int | None:
        try:
            return get_job(session, _checked_id(message_id)).tenant_id
        except NotFound:
            not_found(f"no job record for message {message_id!r}")

    check_sees(console().transact(tenant_of), f"no job record for message {message_id!r}")


@bp.route("/jobs/<message_id>/cancel", methods=["POST"])
@admin_only
def cancel(message_id: str) -> Response:
    """Cancel a job that has not run, or ask a running one to stop (`jobs cancel`)."""
    _check_job(message_id)
    c = console()

    def act() -> str:
        status = c.transact(lambda s: cancel_job(s, message_id, stale_after=c.stale_after))
        return f"job {message_id} {status}"

    attempt(act)
    return redirect(url_for("jobs.job", message_id=message_id))


@bp.route("/jobs/<message_id>/retry", methods=["POST"])
@admin_only
def retry(message_id: str) -> Response:
    """Run a dead or cancelled job again (`jobs retry`)."""
    _check_job(message_id)
    c = console()
    target = {"id": message_id}

    def act() -> str:
        info = retry_job(c.transact, c.load_broker, message_id)
        target["id"] = info["message_id"]
        return f"job {message_id} {info['how']} as {info['message_id']}"

    attempt(act)
    return redirect(url_for("jobs.job", message_id=target["id"]))
