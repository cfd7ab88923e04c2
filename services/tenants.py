"""Tenants: create, look up, enable and disable."""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection
from typing import TypedDict

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import TENANT_ACTIVE, TENANT_DELETING, TENANT_DISABLED, Tenant
from services.errors import UnknownTenant, ValidationFailed

MAX_NAME_LENGTH = 200


class TenantInfo(TypedDict):
    """A tenant as the command line and the API show it."""

    id: int
    name: str
    status: str
    created_at: str


def tenant_info(tenant: Tenant) -> TenantInfo:
    """The plain-data view of a tenant."""
    created = tenant.created_at or dt.datetime.now(dt.UTC)
    return {
        "id": tenant.id,
        "name": tenant.name,
        "status": tenant.status,
        "created_at": created.isoformat(),
    }


def create_tenant(session: Session, name: str) -> Tenant:
    """Create an active tenant named `name` (unique) and flush it to get its id."""
    clean = name.strip()
    if not clean or len(clean) > MAX_NAME_LENGTH:
        raise ValidationFailed(f"tenant name must be 1 to {MAX_NAME_LENGTH} characters")
    existing = session.scalar(select(Tenant).where(Tenant.name == clean))
    if existing is not None:
        raise ValidationFailed(f"a tenant named {clean!r} already exists (id {existing.id})")
    tenant = Tenant(name=clean, status=TENANT_ACTIVE)
    session.add(tenant)
    session.flush()
    return tenant


def get_tenant(session: Session, tenant_id: int) -> Tenant:
    """The tenant with this id, or `UnknownTenant`."""
    tenant = session.get(Tenant, tenant_id)
    if tenant is None:
        raise UnknownTenant(tenant_id)
    return tenant


def list_tenants(
    session: Session,
    *,
    status: str | None = None,
    after: int | None = None,
    limit: int | None = None,
    among: Collection[int] | None = None,
) -> list[Tenant]:
    """All tenants, oldest first, optionally only those with `status`.

    A page of them: the first `limit` whose id is above `after` (the last id of
    the page before), of those in `among` (an operator's scope) if given.
    """
    query = select(Tenant).order_by(Tenant.id)
    if status is not None:
        query = query.where(Tenant.status == status)
    if after is not None:
        query = query.where(Tenant.id > after)
    if among is not None:
        query = query.where(Tenant.id.in_(sorted(among)))
    if limit is not None:
        query = query.limit(limit)
    return list(session.scalars(query))


def served_tenant_ids(session: Session) -> list[int]:
    """The tenants whose queues an unpinned worker serves (`is_served`), by id."""
    return sorted(t for t, status in tenant_statuses(session).items() if is_served(status))


def is_served(status: str) -> bool:
    """Whether an unpinned worker serves a tenant in this status: all but one being deleted.

    A disabled tenant's queue is served too, so that its messages are
    dead-lettered with reason `tenant_disabled` rather than waiting unseen;
    a tenant being deleted is not: its queues are going away.
    """
    return status != TENANT_DELETING


def tenant_statuses(session: Session) -> dict[int, str]:
    """Every tenant's status, by id (the worker's in-process state)."""
    return {
        tenant_id: status for tenant_id, status in session.execute(select(Tenant.id, Tenant.status))
    }


def set_tenant_status(session: Session, tenant_id: int, status: str) -> Tenant:
    """Enable or disable a tenant; a disabled tenant's messages are dead-lettered, not run."""
    if status not in (TENANT_ACTIVE, TENANT_DISABLED):
        raise ValidationFailed(f"status must be {TENANT_ACTIVE} or {TENANT_DISABLED}")
    tenant = get_tenant(session, tenant_id)
    if tenant.status == TENANT_DELETING:
        raise ValidationFailed(f"tenant {tenant_id} is being deleted; its status cannot change")
    tenant.status = status
    session.flush()
    return tenant
