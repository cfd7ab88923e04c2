"""The tenants page: status, the hosts serving each; enable, disable; delete (typed name)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from flask import Blueprint, redirect, render_template, request, url_for
from sqlalchemy.orm import Session
from werkzeug.wrappers import Response

from cli.tenants import send_tenant_deletion
from db.models import TENANT_ACTIVE, TENANT_DISABLED
from services.errors import UnknownTenant
from services.job_stats import finished_by_tenant, waiting_by_tenant
from services.tenants import TenantInfo, get_tenant, list_tenants, set_tenant_status, tenant_info
from services.workers import serving_hosts, unserved_tenants
from web.auth import admin_only
from web.console import attempt, check_sees, console, not_found, operator
from web.filters import after_id_param, limit_param

bp = Blueprint("tenants", __name__)


# The window of a tenant's throughput on the tenants page.
THROUGHPUT_WINDOW = dt.timedelta(hours=1)
# Waiting records counted: those sent this recently (older ones are `health`'s stuck ones).
WAITING_WINDOW = dt.timedelta(hours=24)


def _tenant_rows(
    session: Session, *, after: int | None, limit: int, scope: frozenset[int] | None
) -> list[dict[str, Any]]:
    """One page of the tenants the operator may see: the first `limit` with ids above `after`,
    with the hosts serving each (read for the page's tenants alone, so that a page costs
    the same with ten tenants or ten thousand)."""
    now = dt.datetime.now(dt.UTC)
    page = list_tenants(session, after=after, limit=limit, among=scope)
    if not page:
        return []
    c = console()
    window, prefix = c.stale_after, c.settings.queue_prefix
    # The hosts of the live workers consuming each tenant's queue; `health`'s unserved ones.
    hosts = serving_hosts(session, now=now, stale_after=window, queue_prefix=prefix)
    unserved = set(unserved_tenants(session, now=now, stale_after=window, queue_prefix=prefix))
    return [
        {**tenant_info(t), "hosts": hosts.get(t.id, []), "unserved": t.id in unserved} for t in page
    ]


def _tenant_figures(
    session: Session, *, after: int | None, limit: int, scope: frozenset[int] | None
) -> tuple[list[int], dict[int, int], dict[int, int]]:
    """The ids of a page of tenants, their records waiting and finished lately.

    Counted from the job records: a busy tenant's hour holds many, so the page
    loads these after itself.
    """
    now = dt.datetime.now(dt.UTC)
    ids = [t.id for t in list_tenants(session, after=after, limit=limit, among=scope)]
    if not ids:
        return [], {}, {}
    waiting = waiting_by_tenant(session, since=now - WAITING_WINDOW, tenant_ids=ids)
    finished = finished_by_tenant(session, since=now - THROUGHPUT_WINDOW, tenant_ids=ids)
    return ids, waiting, finished


@bp.route("/tenants")
def tenants() -> str:
    """The tenants the operator may see, oldest first, a page at a time (`limit`, `after`):
    status and the hosts serving each.  Their jobs waiting, finished lately and queues in
    RabbitMQ load after the page (`tenant_figures`): the page does not wait for them."""
    args = request.args
    after = after_id_param(args)
    limit = limit_param(args)
    scope = operator().tenant_ids
    rows = console().transact(
        lambda session: _tenant_rows(session, after=after, limit=limit, scope=scope)
    )
    kept: dict[str, Any] = {"limit": limit} if args.get("limit") else {}
    page: dict[str, Any] = {**kept, "after": after} if after is not None else kept
    last = rows[-1]["id"] if rows and len(rows) >= limit else None
    return render_template(
        "tenants.html",
        rows=rows,
        figures_url=url_for("tenants.tenant_figures", **page),
        next_page=url_for("tenants.tenants", **kept, after=last) if last else None,
        first_page=url_for("tenants.tenants", **kept) if after is not None else None,
    )


@bp.route("/tenants/figures")
def tenant_figures() -> str:
    """The figures of the tenants page with the same `after` and `limit`: each tenant's jobs
    waiting, finished in the last hour, and its queue in RabbitMQ now (read for that
    page's tenants only), as cells that htmx swaps into the page by id."""
    args = request.args
    after = after_id_param(args)
    limit = limit_param(args)
    scope = operator().tenant_ids
    ids, waiting, finished = console().transact(
        lambda session: _tenant_figures(session, after=after, limit=limit, scope=scope)
    )
    queues, queues_error, queues_warning = console().queues.read(ids)
    htmx = bool(request.headers.get("HX-Request"))
    kept: dict[str, Any] = {n: args[n] for n in ("after", "limit") if args.get(n)}
    return render_template(
        # Without JavaScript, a page of its own.
        "tenant_figures.html" if htmx else "tenant_figures_page.html",
        back=url_for("tenants.tenants", **kept),
        ids=ids,
        waiting=waiting,
        finished=finished,
        depth={q["tenant_id"]: q for q in queues or []},
        queues_error=queues_error,
        queues_warning=queues_warning,
    )


def _tenant(tenant_id: int) -> TenantInfo:
    """The tenant, or 404 (also when the operator may not see it)."""
    check_sees(tenant_id, f"no tenant {tenant_id}")

    def read(session: Session) -> TenantInfo:
        try:
            return tenant_info(get_tenant(session, tenant_id))
        except UnknownTenant:
            not_found(f"no tenant {tenant_id}")

    return console().transact(read)


def _set_status(tenant_id: int, status: str) -> Response:
    _tenant(tenant_id)
    c = console()
    attempt(
        lambda: (
            f"tenant {tenant_id} "
            f"{c.transact(lambda s: set_tenant_status(s, tenant_id, status).status)}"
        )
    )
    return redirect(url_for("tenants.tenants"))


@bp.route("/tenants/<int:tenant_id>/enable", methods=["POST"])
@admin_only
def enable(tenant_id: int) -> Response:
    """Mark a tenant active: its jobs run again (`tenant enable`)."""
    return _set_status(tenant_id, TENANT_ACTIVE)


@bp.route("/tenants/<int:tenant_id>/disable", methods=["POST"])
@admin_only
def disable(tenant_id: int) -> Response:
    """Mark a tenant disabled: its jobs are dead-lettered, not run (`tenant disable`)."""
    return _set_status(tenant_id, TENANT_DISABLED)


@bp.route("/tenants/<int:tenant_id>/delete", methods=["GET", "POST"])
@admin_only
def delete(tenant_id: int) -> Response | str:
    """Delete a tenant and all its data once its name is typed (`tenant delete`)."""
    tenant = _tenant(tenant_id)
    if request.method == "GET":
        return render_template("delete_tenant.html", tenant=tenant, error=None)
    if request.form.get("confirm_name", "") != tenant["name"]:
        error = "the name typed is not this tenant's: nothing was deleted"
        return render_template("delete_tenant.html", tenant=tenant, error=error), 400  # type: ignore[return-value]
    c = console()
    attempt(
        lambda: (
            f"deletion of tenant {tenant_id} sent as job "
            f"{send_tenant_deletion(c.transact, c.load_broker, tenant_id)}"
        )
    )
    return redirect(url_for("tenants.tenants"))
