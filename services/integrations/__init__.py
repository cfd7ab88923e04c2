"""A tenant's integrations: the kinds Taskyard knows, their configs, and each sync's outcome."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypedDict
from urllib.parse import urlsplit

import marshmallow
from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import Integration
from services.errors import FetchFailed, FetchRefused, NotFound, ValidationFailed
from services.integrations import github, http_feed
from services.redaction import redact_url
from services.resources import format_errors
from services.tenants import get_tenant
from services.url_guard import check_url

SYNC_SUCCEEDED = "succeeded"
SYNC_FAILED = "failed"


@dataclass(frozen=True)
class Kind:
    """One kind of integration: its config schema, how to describe a config, its URL keys."""

    name: str
    schema: type[marshmallow.Schema]
    describe: Callable[[dict[str, Any]], str]
    # Config keys holding a URL Taskyard will call: checked by the URL guard when stored.
    url_keys: tuple[str, ...]


KINDS: Mapping[str, Kind] = {
    "github": Kind("github", github.GithubConfig, github.describe, ("base_url",)),
    "http_feed": Kind("http_feed", http_feed.HttpFeedConfig, http_feed.describe, ("url",)),
}


class IntegrationInfo(TypedDict):
    """An integration as the command line shows it (`--json`)."""

    id: int
    tenant_id: int
    kind: str
    config: dict[str, Any]
    description: str
    last_synced_at: str | None
    last_status: str | None
    last_summary: dict[str, Any] | None
    created_at: str | None


def validate_config(kind: str, config: Any) -> dict[str, Any]:
    """The config with its defaults filled in, or ValidationFailed listing every problem."""
    known = KINDS.get(kind)
    if known is None:
        raise ValidationFailed(
            f"unknown integration kind {kind!r}; known kinds: {', '.join(sorted(KINDS))}"
        )
    if not isinstance(config, dict):
        raise ValidationFailed(
            f"{kind} config must be a JSON object, not a {type(config).__name__}"
        )
    try:
        loaded: dict[str, Any] = known.schema(unknown=marshmallow.RAISE).load(config)
    except marshmallow.ValidationError as exc:
        raise ValidationFailed(f"invalid {kind} config: {format_errors(exc.messages)}") from None
    return loaded


def check_config_urls(kind: str, config: Mapping[str, Any], *, allow_private: bool) -> None:
    """Refuse (ValidationFailed) a validated config whose URLs the URL guard would refuse.

    The rule is `check_url`'s, as for a webhook URL, so a metadata, loopback or
    private address fails when it is stored rather than at the first sync. A
    host that does not resolve is refused too: here it is most likely a typo.
    """
    for key in KINDS[kind].url_keys:
        url = config.get(key)
        if not isinstance(url, str):
            continue
        try:
            check_url(url, allow_private=allow_private)
        except FetchRefused as exc:
            raise ValidationFailed(f"{kind} integration not added: its {key} {exc}") from exc
        except FetchFailed:
            host = urlsplit(url).hostname
            raise ValidationFailed(
                f"{kind} integration not added: its {key} {redact_url(url)} refused: host "
                f"{host!r} does not resolve; check the host name, or add the integration "
                "once it resolves"
            ) from None


def add_integration(
    session: Session,
    tenant_id: int,
    kind: str,
    config: Any,
    *,
    allow_private: bool = False,
    secret_keys: Sequence[str] = (),
) -> Integration:
    """Create an integration of a tenant after validating its config and checking its URLs.

    `allow_private` is TASKYARD_HTTP_ALLOW_PRIVATE. A feed URL's credentials go
    to the tenant's locker (see `http_feed.move_credentials`), which needs
    `secret_keys`; the stored config keeps the URL without them.
    """
    get_tenant(session, tenant_id)
    loaded = validate_config(kind, config)
    check_config_urls(kind, loaded, allow_private=allow_private)
    integration = Integration(tenant_id=tenant_id, kind=kind, config=loaded)
    session.add(integration)
    session.flush()
    if kind == "http_feed":
        http_feed.move_credentials(session, integration, secret_keys=secret_keys)
    return integration


def list_integrations(session: Session, tenant_id: int) -> list[Integration]:
    """A tenant's integrations, oldest first."""
    get_tenant(session, tenant_id)
    return list(
        session.scalars(
            select(Integration).where(Integration.tenant_id == tenant_id).order_by(Integration.id)
        )
    )


def get_integration(
    session: Session, integration_id: int, tenant_id: int | None = None, *, lock: bool = False
) -> Integration:
    """One integration (of `tenant_id`, when given), or NotFound; `lock` holds its row."""
    query = select(Integration).where(Integration.id == integration_id)
    if tenant_id is not None:
        query = query.where(Integration.tenant_id == tenant_id)
    if lock:
        query = query.with_for_update()
    integration = session.scalars(query).one_or_none()
    if integration is None:
        owner = f" of tenant {tenant_id}" if tenant_id is not None else ""
        raise NotFound(f"integration {integration_id}{owner} does not exist")
    return integration


def remove_integration(session: Session, integration_id: int) -> None:
    """Delete an integration, (by cascade) the rows it synced, and its feed credentials."""
    integration = get_integration(session, integration_id)
    if integration.kind == "http_feed":
        http_feed.forget_credentials(session, integration)
    session.delete(integration)
    session.flush()


def record_sync(
    integration: Integration, *, status: str, summary: dict[str, Any], now: dt.datetime
) -> None:
    """Remember the outcome of the latest sync on the integration."""
    integration.last_synced_at = now
    integration.last_status = status
    integration.last_summary = summary


def integration_info(integration: Integration) -> IntegrationInfo:
    """An integration as plain data (configs hold locker key names, never secrets)."""
    kind = KINDS.get(integration.kind)
    return {
        "id": integration.id,
        "tenant_id": integration.tenant_id,
        "kind": integration.kind,
        "config": _shown(integration.config),
        "description": kind.describe(integration.config) if kind else integration.kind,
        "last_synced_at": _iso(integration.last_synced_at),
        "last_status": integration.last_status,
        "last_summary": integration.last_summary,
        "created_at": _iso(integration.created_at),
    }


def _shown(config: Mapping[str, Any]) -> dict[str, Any]:
    # A feed URL may carry a user name and password; show it without them.
    return {k: redact_url(v) if k == "url" and isinstance(v, str) else v for k, v in config.items()}


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
