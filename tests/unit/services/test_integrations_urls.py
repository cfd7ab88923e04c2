"""Integrations' URLs are checked when stored, and a feed URL's credentials go to the locker."""

from __future__ import annotations

import re
import socket
from typing import Any

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from db.models import Integration, LockerEntry, Tenant
from services import locker
from services.errors import NotFound, ValidationFailed
from services.integrations import add_integration, list_integrations, remove_integration
from services.integrations.http_feed import (
    credentials_key,
    feed_url,
    move_credentials,
)
from services.locker import NoSecretKey
from tests.unit.services.test_url_guard import PUBLIC, fake_resolver

KEYS = [Fernet.generate_key().decode()]
FEED_WITH_PASSWORD = "https://alice:s3cret-pw@feeds.example/x.json"


@pytest.mark.parametrize(
    ("kind", "config", "shown", "kind_of_address"),
    [
        (
            "http_feed",
            {"url": "http://169.254.169.254/latest/meta-data/"},
            "its url http://169.254.169.254/latest/meta-data/ refused",
            "link-local",
        ),
        ("http_feed", {"url": "http://[::1]/"}, "its url http://[::1]/ refused", "loopback"),
        ("http_feed", {"url": "http://10.0.0.1/f"}, "its url http://10.0.0.1/f refused", "private"),
        (
            "http_feed",
            {"url": "http://127.0.0.1:8080/f"},
            "its url http://127.0.0.1:8080/f refused",
            "loopback",
        ),
        (
            "github",
            {"org": "acme", "base_url": "http://169.254.169.254/"},
            "its base_url http://169.254.169.254/ refused",
            "link-local",
        ),
        (
            "github",
            {"org": "acme", "base_url": "http://10.0.0.1/api/v3"},
            "its base_url http://10.0.0.1/api/v3 refused",
            "private",
        ),
    ],
)
def test_internal_url_is_refused_when_added(
    sqlite_session: Session,
    tenant: Tenant,
    kind: str,
    config: dict[str, str],
    shown: str,
    kind_of_address: str,
) -> None:
    with pytest.raises(ValidationFailed) as caught:
        add_integration(sqlite_session, tenant.id, kind, config, secret_keys=KEYS)

    message = str(caught.value)
    assert message.startswith(f"{kind} integration not added: {shown}")
    assert f"a {kind_of_address} address" in message
    assert "TASKYARD_HTTP_ALLOW_PRIVATE=true" in message
    assert list_integrations(sqlite_session, tenant.id) == []


def test_name_resolving_to_a_private_address_is_refused(
    sqlite_session: Session, tenant: Tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", fake_resolver(PUBLIC, "10.0.0.7"))

    with pytest.raises(
        ValidationFailed, match=re.escape("resolves to 10.0.0.7, a private address")
    ):
        add_integration(sqlite_session, tenant.id, "http_feed", {"url": "https://feeds.example/"})


def test_refusal_does_not_show_the_password(sqlite_session: Session, tenant: Tenant) -> None:
    config = {"url": "http://alice:s3cret-pw@10.0.0.1/feed"}

    with pytest.raises(ValidationFailed) as caught:
        add_integration(sqlite_session, tenant.id, "http_feed", config, secret_keys=KEYS)

    assert "http://10.0.0.1/feed" in str(caught.value)
    assert "s3cret-pw" not in str(caught.value)
    assert locker.list_secret_keys(sqlite_session, tenant.id) == []


@pytest.mark.parametrize(
    ("kind", "config", "problem"),
    [
        ("http_feed", {"url": "ftp://files.example/feed"}, "not an http or https URL"),
        ("http_feed", {"url": "gopher://feeds.example/1"}, "not an http or https URL"),
        ("github", {"org": "acme", "base_url": "file:///etc/passwd"}, "base_url: Not a valid URL"),
    ],
)
def test_other_scheme_is_refused_when_added(
    sqlite_session: Session, tenant: Tenant, kind: str, config: dict[str, str], problem: str
) -> None:
    with pytest.raises(ValidationFailed, match=problem):
        add_integration(sqlite_session, tenant.id, kind, config, allow_private=True)

    assert list_integrations(sqlite_session, tenant.id) == []


def test_host_that_does_not_resolve_is_refused_when_added(
    sqlite_session: Session, tenant: Tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(*args: Any, **kwargs: Any) -> Any:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", fail)

    with pytest.raises(ValidationFailed) as caught:
        add_integration(sqlite_session, tenant.id, "http_feed", {"url": FEED_WITH_PASSWORD})

    assert str(caught.value) == (
        "http_feed integration not added: its url https://feeds.example/x.json refused: "
        "host 'feeds.example' does not resolve; check the host name, or add the integration "
        "once it resolves"
    )
    assert list_integrations(sqlite_session, tenant.id) == []


def test_public_url_is_added(
    sqlite_session: Session, tenant: Tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", fake_resolver(PUBLIC))

    github = add_integration(sqlite_session, tenant.id, "github", {"org": "acme"})
    feed = add_integration(sqlite_session, tenant.id, "http_feed", {"url": "https://f.example/"})

    assert github.config["base_url"] == "https://api.github.com"
    assert feed.config == {"url": "https://f.example/"}


def test_private_url_is_added_when_allowed(sqlite_session: Session, tenant: Tenant) -> None:
    config = {"url": "http://127.0.0.1:8080/feed"}

    integration = add_integration(
        sqlite_session, tenant.id, "http_feed", config, allow_private=True
    )

    assert integration.config == config


def test_feed_password_goes_to_the_locker_not_the_config(
    sqlite_session: Session, tenant: Tenant
) -> None:
    integration = add_integration(
        sqlite_session,
        tenant.id,
        "http_feed",
        {"url": FEED_WITH_PASSWORD},
        allow_private=True,
        secret_keys=KEYS,
    )

    stored = sqlite_session.execute(
        text("SELECT config FROM integrations WHERE id = :id"), {"id": integration.id}
    ).scalar_one()
    assert "s3cret-pw" not in str(stored) and "alice" not in str(stored)
    assert integration.config == {"url": "https://feeds.example/x.json"}
    key = credentials_key(integration.id)
    assert key == f"http_feed.{integration.id}.userinfo"
    secret = locker.get_secret(sqlite_session, tenant.id, key, secret_keys=KEYS)
    assert secret.reveal() == "alice:s3cret-pw"
    ciphertexts = sqlite_session.scalars(select(LockerEntry.ciphertext)).all()
    assert not any("s3cret-pw" in c for c in ciphertexts)
    assert feed_url(sqlite_session, integration, secret_keys=KEYS) == FEED_WITH_PASSWORD


def test_feed_user_name_alone_goes_to_the_locker(sqlite_session: Session, tenant: Tenant) -> None:
    integration = add_integration(
        sqlite_session,
        tenant.id,
        "http_feed",
        {"url": "https://tok3n@feeds.example/x.json"},
        allow_private=True,
        secret_keys=KEYS,
    )

    assert integration.config == {"url": "https://feeds.example/x.json"}
    assert feed_url(sqlite_session, integration, secret_keys=KEYS) == (
        "https://tok3n@feeds.example/x.json"
    )


def test_feed_password_without_a_secret_key_is_refused(
    sqlite_session: Session, tenant: Tenant
) -> None:
    with pytest.raises(NoSecretKey, match="set TASKYARD_SECRET_KEYS"):
        add_integration(
            sqlite_session, tenant.id, "http_feed", {"url": FEED_WITH_PASSWORD}, allow_private=True
        )


def test_feed_without_credentials_has_no_locker_entry(
    sqlite_session: Session, tenant: Tenant
) -> None:
    integration = add_integration(
        sqlite_session, tenant.id, "http_feed", {"url": "https://f.example/x"}, allow_private=True
    )

    assert locker.list_secret_keys(sqlite_session, tenant.id) == []
    # No secret key is needed to read a feed URL that has no credentials.
    assert feed_url(sqlite_session, integration, secret_keys=()) == "https://f.example/x"


def test_a_row_with_its_password_in_the_config_still_syncs_and_moves_it(
    sqlite_session: Session, tenant: Tenant
) -> None:
    # Given a row stored before credentials went to the locker
    integration = Integration(
        tenant_id=tenant.id, kind="http_feed", config={"url": FEED_WITH_PASSWORD}
    )
    sqlite_session.add(integration)
    sqlite_session.flush()

    # Then its URL is fetched as it is, credentials and all
    assert feed_url(sqlite_session, integration, secret_keys=()) == FEED_WITH_PASSWORD
    # And the sync moves them to the locker, once
    assert move_credentials(sqlite_session, integration, secret_keys=KEYS) is True
    assert move_credentials(sqlite_session, integration, secret_keys=KEYS) is False
    sqlite_session.expire_all()
    assert integration.config == {"url": "https://feeds.example/x.json"}
    assert feed_url(sqlite_session, integration, secret_keys=KEYS) == FEED_WITH_PASSWORD


def test_removing_a_feed_deletes_its_credentials(sqlite_session: Session, tenant: Tenant) -> None:
    locker.set_secret(sqlite_session, tenant.id, "github.token", "ghp_x", secret_keys=KEYS)
    integration = add_integration(
        sqlite_session,
        tenant.id,
        "http_feed",
        {"url": FEED_WITH_PASSWORD},
        allow_private=True,
        secret_keys=KEYS,
    )
    key = credentials_key(integration.id)

    remove_integration(sqlite_session, integration.id)

    assert locker.list_secret_keys(sqlite_session, tenant.id) == ["github.token"]
    with pytest.raises(NotFound, match=re.escape(key)):
        locker.get_secret(sqlite_session, tenant.id, key, secret_keys=KEYS)
