"""Kind `http_feed`: a resource feed URL, ingested on each sync by the feed ingest.

A feed URL may carry credentials (`https://user:password@host/feed`). They are
not kept in the config: `move_credentials` puts the whole userinfo in the
tenant's locker under `http_feed.<integration id>.userinfo` (see
`credentials_key`) and leaves the URL without it; `feed_url` puts it back
for the fetch, where requests sends it as HTTP basic auth.
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlsplit, urlunsplit

from marshmallow import Schema, ValidationError, fields, validate, validates
from sqlalchemy.orm import Session

from db.models import Integration
from services import locker
from services.redaction import redact_url
from services.url_guard import ALLOWED_SCHEMES


class HttpFeedConfig(Schema):
    """Config of an `http_feed` integration."""

    url = fields.String(required=True, validate=validate.Length(min=1, max=2_000))

    @validates("url")
    def _url_is_http(self, value: str, **_kwargs: object) -> None:
        scheme = value.partition("://")[0].lower() if "://" in value else ""
        if scheme not in ALLOWED_SCHEMES:
            raise ValidationError(f"{redact_url(value)} is not an http or https URL")


def describe(config: dict[str, object]) -> str:
    """One line for the command line: where the feed is (without credentials)."""
    return f"feed {redact_url(str(config.get('url', '')))}"


def credentials_key(integration_id: int) -> str:
    """The locker key holding the userinfo (`user:password`) of an integration's feed URL."""
    return f"http_feed.{integration_id}.userinfo"


def move_credentials(
    session: Session, integration: Integration, *, secret_keys: Sequence[str]
) -> bool:
    """Move the userinfo of the config's URL to the locker; whether there was any.

    Called when an integration is added, and before each sync: a row stored
    before credentials went to the locker is moved on its first sync.
    """
    url = integration.config.get("url")
    userinfo = _userinfo(url) if isinstance(url, str) else ""
    if not isinstance(url, str) or not userinfo:
        return False
    locker.set_secret(
        session,
        integration.tenant_id,
        credentials_key(integration.id),
        userinfo,
        secret_keys=secret_keys,
    )
    integration.config = {**integration.config, "url": redact_url(url)}
    session.flush()
    return True


def feed_url(session: Session, integration: Integration, *, secret_keys: Sequence[str]) -> str:
    """The URL to fetch: the config's, with the locker's userinfo when there is an entry.

    The result may carry a password: pass it to the fetch only, never log it.
    """
    url: str = integration.config["url"]
    key = credentials_key(integration.id)
    if key not in locker.list_secret_keys(session, integration.tenant_id):
        return url
    userinfo = locker.get_secret(session, integration.tenant_id, key, secret_keys=secret_keys)
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{userinfo.reveal()}@{host}"))


def forget_credentials(session: Session, integration: Integration) -> bool:
    """Delete the locker entry of an integration's feed credentials; whether there was one."""
    return locker.delete_secret(session, integration.tenant_id, credentials_key(integration.id))


def _userinfo(url: str) -> str:
    try:
        netloc = urlsplit(url).netloc
    except ValueError:
        return ""
    return netloc.rpartition("@")[0]
