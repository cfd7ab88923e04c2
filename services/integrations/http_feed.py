"""Kind `http_feed`: a resource feed URL, ingested on each sync by the feed ingest."""

from __future__ import annotations

from marshmallow import Schema, ValidationError, fields, validate, validates

from services.url_guard import ALLOWED_SCHEMES, redact_url


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
