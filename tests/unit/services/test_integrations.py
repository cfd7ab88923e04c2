"""Integrations: kinds, config validation, listing, info and removal (SQLite)."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session

from db.models import Integration, Tenant
from services.errors import NotFound, UnknownTenant, ValidationFailed
from services.integrations import (
    KINDS,
    add_integration,
    get_integration,
    integration_info,
    list_integrations,
    remove_integration,
)
from services.tenants import create_tenant


def test_github_config_gets_its_defaults(sqlite_session: Session, tenant: Tenant) -> None:
    integration = add_integration(
        sqlite_session, tenant.id, "github", {"org": "acme-corp"}, allow_private=True
    )

    assert integration.id is not None
    assert integration.config == {
        "org": "acme-corp",
        "base_url": "https://api.github.com",
        "token_key": "github.token",
    }


def test_http_feed_config_is_kept(sqlite_session: Session, tenant: Tenant) -> None:
    integration = add_integration(
        sqlite_session,
        tenant.id,
        "http_feed",
        {"url": "https://feeds.example/a.json"},
        allow_private=True,
    )

    assert integration.config == {"url": "https://feeds.example/a.json"}


def test_unknown_kind_names_the_known_ones(sqlite_session: Session, tenant: Tenant) -> None:
    with pytest.raises(ValidationFailed) as caught:
        add_integration(sqlite_session, tenant.id, "gitlab", {})

    assert "unknown integration kind 'gitlab'" in str(caught.value)
    assert "github, http_feed" in str(caught.value)
    assert sorted(KINDS) == ["github", "http_feed"]


@pytest.mark.parametrize(
    ("kind", "config", "problems"),
    [
        ("github", {}, ["org: Missing data"]),
        ("github", {"org": "-bad-", "base_url": "ftp://x"}, ["org:", "base_url:"]),
        ("github", {"org": "acme", "tokne_key": "x"}, ["tokne_key: Unknown field"]),
        ("http_feed", {"url": "file:///etc/passwd"}, ["url:", "not an http or https URL"]),
        ("http_feed", {}, ["url: Missing data"]),
        ("github", ["org"], ["must be a JSON object"]),
    ],
)
def test_bad_config_lists_every_problem(
    sqlite_session: Session, tenant: Tenant, kind: str, config: object, problems: list[str]
) -> None:
    with pytest.raises(ValidationFailed) as caught:
        add_integration(sqlite_session, tenant.id, kind, config)

    for problem in problems:
        assert problem in str(caught.value)
    assert list_integrations(sqlite_session, tenant.id) == []


def test_unknown_tenant_is_refused(sqlite_session: Session) -> None:
    with pytest.raises(UnknownTenant):
        add_integration(sqlite_session, 999, "github", {"org": "acme"})


def test_get_is_scoped_to_the_tenant(sqlite_session: Session, tenant: Tenant) -> None:
    other = create_tenant(sqlite_session, "other")
    integration = add_integration(
        sqlite_session, tenant.id, "github", {"org": "acme"}, allow_private=True
    )

    assert get_integration(sqlite_session, integration.id, tenant.id) is integration
    assert get_integration(sqlite_session, integration.id) is integration
    with pytest.raises(NotFound, match=f"integration {integration.id} of tenant {other.id}"):
        get_integration(sqlite_session, integration.id, other.id)


def test_list_and_remove(sqlite_session: Session, tenant: Tenant) -> None:
    first = add_integration(
        sqlite_session, tenant.id, "github", {"org": "acme"}, allow_private=True
    )
    second = add_integration(
        sqlite_session, tenant.id, "http_feed", {"url": "http://f.example/"}, allow_private=True
    )

    assert [i.id for i in list_integrations(sqlite_session, tenant.id)] == [first.id, second.id]
    remove_integration(sqlite_session, first.id)
    assert [i.id for i in list_integrations(sqlite_session, tenant.id)] == [second.id]
    with pytest.raises(NotFound):
        remove_integration(sqlite_session, first.id)


def test_info_hides_feed_credentials(sqlite_session: Session, tenant: Tenant) -> None:
    # A row stored before feed credentials went to the locker still has them in its URL.
    integration = Integration(
        tenant_id=tenant.id,
        kind="http_feed",
        config={"url": "https://alice:s3cret@f.example/x.json"},
    )
    sqlite_session.add(integration)
    sqlite_session.flush()
    sqlite_session.refresh(integration)

    info = integration_info(integration)

    assert info["kind"] == "http_feed"
    assert info["config"] == {"url": "https://f.example/x.json"}
    assert "s3cret" not in str(info)
    assert info["last_status"] is None
    assert info["created_at"] is not None
