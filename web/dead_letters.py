"""The dead-letter pages: list and filter, one letter, requeue or purge one, a selection, or all."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from flask import Blueprint, current_app, redirect, render_template, request, url_for
from sqlalchemy.orm import Session
from werkzeug.wrappers import Response

from cli.common import describe_error
from cli.dead_letters import requeue_dead_letters
from services.dead_letters import (
    DEAD_LETTERS_LISTING,
    DeadLetterFilter,
    count_dead_letters,
    count_requeueable,
    dead_letter_cursor,
    dead_letter_info,
    get_dead_letter,
    list_dead_letters,
    purge_dead_letters,
)
from services.errors import NotFound
from web.auth import admin_only
from web.batches import Batches
from web.console import attempt, check_sees, console, not_found, operator, scoped_tenant
from web.filters import (
    bad_request,
    choice_param,
    cursor_param,
    limit_param,
    tenant_param,
    text_param,
    time_range_params,
)

bp = Blueprint("dead_letters", __name__)
logger = logging.getLogger(__name__)
BATCHES = "taskyard_batches"


def batches() -> Batches:
    """The app's bulk requeues."""
    found: Batches = current_app.extensions[BATCHES]
    return found


ACTIONS = ["requeue", "purge"]
# A selection is what one page shows at most.
MAX_SELECTED = 500
MAX_MESSAGE_ID = 64
FILTER_KEYS = ("tenant", "actor", "reason", "error", "since", "until", "requeued")


def _filter(args: Mapping[str, str]) -> DeadLetterFilter:
    """The filter the URL (or a confirmed form) names, limited to the operator's scope."""
    ids = request.values.getlist("id")
    if len(ids) > MAX_SELECTED or any(len(i) > MAX_MESSAGE_ID for i in ids):
        bad_request(f"select at most {MAX_SELECTED} dead letters by their message ids")
    tenant_id = scoped_tenant(tenant_param(args))
    if ids:
        # A selection names its letters; the tenant still bounds it to the scope.
        return DeadLetterFilter(tenant_id=tenant_id, include_requeued=True, message_ids=tuple(ids))
    since, until = time_range_params(args)
    return DeadLetterFilter(
        tenant_id=tenant_id,
        actor=text_param(args, "actor"),
        reason=text_param(args, "reason"),
        error_contains=text_param(args, "error"),
        since=since,
        until=until,
        include_requeued=args.get("requeued") == "1",
    )


def _described(flt: DeadLetterFilter) -> str:
    """The filter in words, for the confirmation page."""
    if flt.message_ids is not None:
        where = f" of tenant {flt.tenant_id}" if flt.tenant_id is not None else ""
        return f"the {len(flt.message_ids)} selected{where}"
    parts = [
        f"{label} {value!r}" if isinstance(value, str) else f"{label} {value}"
        for label, value in (
            ("tenant", flt.tenant_id),
            ("actor", flt.actor),
            ("reason", flt.reason),
            ("error containing", flt.error_contains),
        )
        if value is not None
    ]
    if flt.since is not None:
        parts.append(f"dead since {flt.since.isoformat()}")
    if flt.until is not None:
        parts.append(f"dead before {flt.until.isoformat()}")
    if flt.include_requeued:
        parts.append("requeued ones included")
    return "all matching " + (", ".join(parts) if parts else "no filter: every one")


@bp.route("/dead-letters")
def dead_letters() -> str:
    """Dead letters, newest first, filtered as `taskyard dead-letters list` filters them."""
    args = request.args
    flt = _filter(args)
    after = cursor_param(args, DEAD_LETTERS_LISTING)
    limit = limit_param(args)

    def read(session: Session) -> list[dict[str, Any]]:
        found = list_dead_letters(session, flt, after=after, limit=limit)
        return [{**dead_letter_info(d), "cursor": dead_letter_cursor(d)} for d in found]

    rows = console().transact(read)
    filters: dict[str, Any] = {k: args[k] for k in FILTER_KEYS if args.get(k)}
    if flt.tenant_id is not None:
        filters["tenant"] = str(flt.tenant_id)
    last = rows[-1]["cursor"] if rows and len(rows) >= limit else None
    return render_template(
        "dead_letters.html",
        rows=rows,
        filters=filters,
        next_page=url_for("dead_letters.dead_letters", **filters, after=last) if last else None,
    )


@bp.route("/dead-letters/confirm")
def confirm() -> str:
    """How many a bulk requeue or purge would touch, and the form that does it."""
    action = choice_param(request.args, "action", ACTIONS)
    if action is None:
        bad_request(f"action must be one of {', '.join(ACTIONS)}")
    flt = _filter(request.args)
    counter = count_requeueable if action == "requeue" else count_dead_letters
    count = console().transact(lambda s: counter(s, flt))
    carried = [(k, v) for k, v in request.args.items(multi=True) if k in (*FILTER_KEYS, "id")]
    if flt.tenant_id is not None and not request.args.get("tenant"):
        carried.append(("tenant", str(flt.tenant_id)))
    return render_template(
        "confirm_dead_letters.html",
        action=action,
        count=count,
        described=_described(flt),
        carried=carried,
    )


@bp.route("/dead-letters/act", methods=["POST"])
@admin_only
def act() -> Response:
    """Requeue or purge what the confirmation page showed (a selection, or all matching)."""
    action = choice_param(request.form, "action", ACTIONS)
    if action is None:
        bad_request(f"action must be one of {', '.join(ACTIONS)}")
    flt = _filter(request.form)
    c = console()

    kept: dict[str, Any] = {k: v for k, v in request.form.items() if k in FILTER_KEYS and v}
    if action == "requeue" and flt.message_ids is None:
        # Everything matching a filter may be many batches: it runs beside the request,
        # and a page shows how far it got.
        total = c.transact(lambda s: count_requeueable(s, flt))
        settings = c.settings

        def work(advance: Callable[[int], None]) -> None:
            requeue_dead_letters(c.transact, c.load_broker(), flt=flt, on_batch=advance)

        # Read now: the batch's thread runs outside this request.
        who = operator()

        def describe(exc: Exception) -> str:
            message = describe_error(exc, settings.database_url, settings.broker_url)[1]
            logger.warning("bulk requeue by %s failed: %s", who.name, message)
            return message

        batch = batches().start(who.id, total, work, describe)
        return redirect(url_for("dead_letters.progress", batch_id=batch.id, **kept))

    def run() -> str:
        if action == "requeue":
            ids = requeue_dead_letters(c.transact, c.load_broker(), flt=flt)
            return f"requeued {len(ids)} dead letter(s)"
        purged = c.transact(lambda s: purge_dead_letters(s, flt))
        return f"purged {purged} dead letter(s)"

    attempt(run)
    return redirect(url_for("dead_letters.dead_letters", **kept))


@bp.route("/dead-letters/requeues/<batch_id>")
def progress(batch_id: str) -> str:
    """How far a bulk requeue got (htmx refreshes it every second until it ends)."""
    batch = batches().get(batch_id)
    if batch is None or batch.operator_id != operator().id:
        not_found("no such requeue in this console process (it may have restarted)")
    kept = {k: v for k, v in request.args.items() if k in FILTER_KEYS and v}
    template = "requeue_progress.html"
    if request.headers.get("HX-Request"):
        template = "requeue_progress_panel.html"
    return render_template(template, batch=batch, kept=kept)


def _letter(session: Session, message_id: str) -> dict[str, Any]:
    if len(message_id) > MAX_MESSAGE_ID:
        not_found("no such dead letter")
    try:
        info: dict[str, Any] = dict(dead_letter_info(get_dead_letter(session, message_id)))
    except NotFound:
        not_found(f"no dead letter for message {message_id!r}")
    check_sees(info["tenant_id"], f"no dead letter for message {message_id!r}")
    return info


@bp.route("/dead-letters/<message_id>")
def letter(message_id: str) -> str:
    """One dead letter: why it died, its message, its error and traceback."""
    return render_template(
        "dead_letter.html", d=console().transact(lambda s: _letter(s, message_id))
    )


@bp.route("/dead-letters/<message_id>/requeue", methods=["POST"])
@admin_only
def requeue_one(message_id: str) -> Response:
    """Send one dead letter again from its first attempt (`dead-letters requeue ID`)."""
    c = console()
    c.transact(lambda s: _letter(s, message_id))

    def run() -> str:
        requeue_dead_letters(c.transact, c.load_broker(), message_id=message_id)
        return f"requeued {message_id}"

    attempt(run)
    return redirect(url_for("dead_letters.letter", message_id=message_id))


@bp.route("/dead-letters/<message_id>/purge", methods=["POST"])
@admin_only
def purge_one(message_id: str) -> Response:
    """Delete one dead letter."""
    c = console()
    info = c.transact(lambda s: _letter(s, message_id))
    flt = DeadLetterFilter(
        tenant_id=info["tenant_id"], include_requeued=True, message_ids=(message_id,)
    )
    if attempt(lambda: f"purged {c.transact(lambda s: purge_dead_letters(s, flt))} dead letter"):
        return redirect(url_for("dead_letters.dead_letters"))
    return redirect(url_for("dead_letters.letter", message_id=message_id))
