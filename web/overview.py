"""The overview: job records by status, dead letters waiting, workers, scheduler lag; live."""

from __future__ import annotations

import datetime as dt

from flask import Blueprint, render_template, request
from sqlalchemy.orm import Session

from services.job_stats import HourCounts, finished_per_hour
from services.overview import Figures, read_figures
from services.tenants import list_tenants
from web.console import Operator, console, operator

bp = Blueprint("overview", __name__)
# How often the page refreshes its figures (htmx polls the panel).
REFRESH_SECONDS = 5
# The records the status cards count: those sent this recently (an index range, read
# at every refresh; a count of every record would scan the whole table).
STATUS_WINDOW = dt.timedelta(hours=1)
# The hours of finished jobs the chart shows, the latest first; it loads after the page
# and refreshes every minute (it reads a day of records).
HOURS_SHOWN = 24
HOURS_REFRESH_SECONDS = 60
# The deepest queues the overview lists, and how often it reads them again.
QUEUES_SHOWN = 10
QUEUES_REFRESH_SECONDS = 15


class Overview(Figures):
    """The overview's figures, as of one reading (`by_status`: records sent within
    STATUS_WINDOW)."""

    window_minutes: int
    read_at: str


def _tenants(who: Operator) -> list[int] | None:
    return None if who.tenant_ids is None else sorted(who.tenant_ids)


def read_overview(session: Session, who: Operator, stale_after: dt.timedelta) -> Overview:
    """The figures of the tenants the operator may see (every tenant when unscoped)."""
    now = dt.datetime.now(dt.UTC)
    figures = read_figures(
        session,
        tenant_ids=_tenants(who),
        since=now - STATUS_WINDOW,
        now=now,
        stale_after=stale_after,
    )
    return {
        **figures,
        "window_minutes": int(STATUS_WINDOW.total_seconds() // 60),
        "read_at": now.isoformat(),
    }


def _figures() -> Overview:
    c, who = console(), operator()
    return c.transact(lambda s: read_overview(s, who, c.stale_after))


@bp.route("/")
def overview() -> str:
    """The overview page (its panel refreshes itself every few seconds)."""
    return render_template(
        "overview.html", o=_figures(), refresh=REFRESH_SECONDS, hours_refresh=HOURS_REFRESH_SECONDS
    )


@bp.route("/overview/panel")
def panel() -> str:
    """The overview's figures alone, for htmx to swap in."""
    return render_template("overview_panel.html", o=_figures(), refresh=REFRESH_SECONDS)


@bp.route("/overview/hours")
def hours() -> str:
    """Jobs finished per hour over the last day: alone for htmx, or as a page of its own."""
    now = dt.datetime.now(dt.UTC)
    scope = _tenants(operator())
    found: list[HourCounts] = console().transact(
        lambda s: finished_per_hour(s, now=now, hours=HOURS_SHOWN, tenant_ids=scope)
    )
    peak = max([1, *(n for h in found for n in h["counts"].values())])
    template = "overview_hours.html" if request.headers.get("HX-Request") else "hours.html"
    return render_template(template, hours=found, peak=peak, hours_refresh=HOURS_REFRESH_SECONDS)


@bp.route("/overview/queues")
def queues() -> str:
    """The tenants' queues that hold messages now, deepest first (the operator's tenants):
    alone for htmx, or as a page of its own.  Read from RabbitMQ (a passive declare per
    tenant, `QueueReadings` keeping each reading a few seconds), so it loads after the
    page."""
    c = console()
    scope = _tenants(operator())
    ids = scope if scope is not None else c.transact(lambda s: [t.id for t in list_tenants(s)])
    found, error, warning = c.queues.read(ids)
    holding = sorted(
        (q for q in found or [] if q["exists"] and (q["ready"] or q["unacked"])),
        key=lambda q: (-((q["ready"] or 0) + (q["unacked"] or 0)), q["tenant_id"]),
    )
    template = "overview_queues.html" if request.headers.get("HX-Request") else "queues.html"
    return render_template(
        template,
        queues=holding[:QUEUES_SHOWN],
        more=max(0, len(holding) - QUEUES_SHOWN),
        tenants=len(ids),
        error=error,
        warning=warning,
        queues_refresh=QUEUES_REFRESH_SECONDS,
    )
