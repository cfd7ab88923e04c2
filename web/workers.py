"""The workers page: every live process, its heartbeat, and what each of its threads runs now."""

from __future__ import annotations

import datetime as dt
from typing import Any

from flask import Blueprint, render_template

from services.workers import WorkerInfo, list_workers
from web.console import console, operator

bp = Blueprint("workers", __name__)


def _scoped(worker: WorkerInfo) -> dict[str, Any]:
    """A worker as the operator may see it: only the running jobs (and queues) of their tenants."""
    who, settings = operator(), console().settings
    if who.tenant_ids is None:
        return dict(worker)
    own = {settings.tenant_queue(t) for t in who.tenant_ids}
    return {
        **worker,
        "queues": [q for q in worker["queues"] if q in own],
        "running": [job for job in worker["running"] if who.sees(job["tenant_id"])],
    }


# How often the workers page refreshes itself (a worker beats every 2 s by default).
REFRESH_SECONDS = 2


def _rows() -> list[dict[str, Any]]:
    c = console()
    now = dt.datetime.now(dt.UTC)
    found = c.transact(lambda s: list_workers(s, now=now, stale_after=c.stale_after))
    return [_scoped(w) for w in found]


@bp.route("/workers")
def workers() -> str:
    """Live worker processes (host, pid, heartbeat age) and the jobs their threads run."""
    return render_template("workers.html", rows=_rows(), refresh=REFRESH_SECONDS)


@bp.route("/workers/panel")
def panel() -> str:
    """The workers alone, for htmx to swap in."""
    return render_template("workers_panel.html", rows=_rows(), refresh=REFRESH_SECONDS)
