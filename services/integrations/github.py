"""Kind `github`: an organisation's members and repositories, synced through the REST API."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypedDict
from urllib.parse import urlsplit

import requests
from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate
from requests.utils import parse_header_links
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from db.models import GithubMember, GithubRepository, Integration
from services._upsert import upsert
from services.errors import NotFound, PermanentError
from services.http import FetchLimits, get_json, redact_url
from services.locker import get_secret
from services.resources import format_errors

DEFAULT_BASE_URL = "https://api.github.com"
DEFAULT_TOKEN_KEY = "github.token"
PER_PAGE = 100
# A guard against a server whose Link headers never end: 1,000 pages of 100.
MAX_PAGES = 1_000
# Items of one list kept at most (members or repositories): a bound on the sync's memory.
MAX_ITEMS = 50_000
# GitHub's rule for organisation logins: letters, digits and single hyphens.
ORG_PATTERN = r"^[A-Za-z0-9](?:[A-Za-z0-9]|-(?=[A-Za-z0-9])){0,38}$"


class GithubConfig(Schema):
    """Config of a `github` integration."""

    org = fields.String(
        required=True,
        validate=validate.Regexp(ORG_PATTERN, error="not a GitHub organisation login"),
    )
    base_url = fields.Url(
        load_default=DEFAULT_BASE_URL, schemes={"http", "https"}, require_tld=False
    )
    token_key = fields.String(
        load_default=DEFAULT_TOKEN_KEY, validate=validate.Length(min=1, max=200)
    )


class MemberSchema(Schema):
    """One entry of GET /orgs/{org}/members (fields Taskyard keeps)."""

    class Meta:
        unknown = EXCLUDE

    id = fields.Integer(required=True, strict=True, validate=validate.Range(min=1))
    login = fields.String(required=True, validate=validate.Length(min=1, max=200))
    type = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=32))
    site_admin = fields.Boolean(load_default=False)


class RepositorySchema(Schema):
    """One entry of GET /orgs/{org}/repos (fields Taskyard keeps)."""

    class Meta:
        unknown = EXCLUDE

    id = fields.Integer(required=True, strict=True, validate=validate.Range(min=1))
    name = fields.String(required=True, validate=validate.Length(min=1, max=200))
    full_name = fields.String(required=True, validate=validate.Length(min=1, max=400))
    private = fields.Boolean(load_default=False)
    archived = fields.Boolean(load_default=False)
    description = fields.String(load_default=None, allow_none=True)
    default_branch = fields.String(
        load_default=None, allow_none=True, validate=validate.Length(max=200)
    )
    html_url = fields.String(load_default=None, allow_none=True)


class Changes(TypedDict):
    """Rows of one table a sync added, changed and removed."""

    added: int
    updated: int
    removed: int


class GithubSummary(TypedDict):
    """What a `github` sync did."""

    members: Changes
    repositories: Changes


def describe(config: Mapping[str, Any]) -> str:
    """One line for the command line: which organisation, on which server."""
    return f"org {config.get('org')} at {config.get('base_url', DEFAULT_BASE_URL)}"


def sync_github(
    session: Session,
    integration: Integration,
    *,
    http: requests.Session,
    limits: FetchLimits,
    secret_keys: Sequence[str],
) -> GithubSummary:
    """Fetch every page of members and repositories, then upsert them and remove the rest.

    Nothing is written until all pages of both lists have been read, so a sync
    that fails half-way (rate limit, 5xx) removes nothing.
    """
    config = GithubConfig().load(integration.config)
    token = _token(session, integration, config["token_key"], secret_keys)
    headers = {
        "Accept": "application/vnd.github+json",
        "Authorization": f"Bearer {token}",
        "X-GitHub-Api-Version": "2022-11-28",
    }
    base = config["base_url"].rstrip("/")
    org = config["org"]
    members = _fetch_all(http, f"{base}/orgs/{org}/members", base, limits, headers, MemberSchema())
    repos = _fetch_all(http, f"{base}/orgs/{org}/repos", base, limits, headers, RepositorySchema())
    return {
        "members": _apply(session, integration, GithubMember, members, compare=MEMBER_COLUMNS),
        "repositories": _apply(
            session, integration, GithubRepository, repos, compare=REPOSITORY_COLUMNS
        ),
    }


MEMBER_COLUMNS = ("login", "type", "site_admin")
REPOSITORY_COLUMNS = (
    "name",
    "full_name",
    "private",
    "archived",
    "description",
    "default_branch",
    "html_url",
)


def _token(session: Session, integration: Integration, key: str, secret_keys: Sequence[str]) -> str:
    try:
        return get_secret(session, integration.tenant_id, key, secret_keys=secret_keys).reveal()
    except NotFound:
        raise PermanentError(
            f"integration {integration.id} (github) needs a token: tenant "
            f"{integration.tenant_id} has no locker entry {key!r}; run "
            f"`taskyard locker set --tenant {integration.tenant_id} {key}`, then requeue",
            reason="missing_token",
        ) from None


def _fetch_all(
    http: requests.Session,
    url: str,
    base: str,
    limits: FetchLimits,
    headers: Mapping[str, str],
    schema: Schema,
) -> dict[int, dict[str, Any]]:
    """Every item of a paginated list, by GitHub id (a later page wins a duplicate)."""
    items: dict[int, dict[str, Any]] = {}
    next_url: str | None = f"{url}?per_page={PER_PAGE}"
    seen: set[str] = set()
    page = 0
    while next_url is not None:
        page += 1
        if page > MAX_PAGES or next_url in seen:
            raise PermanentError(
                f"GET {redact_url(url)}: pagination does not end (page {page}, "
                f"{redact_url(next_url)}); check base_url",
                reason="invalid_response",
            )
        seen.add(next_url)
        answer = get_json(http, next_url, limits, headers=headers)
        safe_url = redact_url(answer.url)
        if not isinstance(answer.body, list):
            raise PermanentError(
                f"GET {safe_url} returned a JSON {type(answer.body).__name__}, expected a "
                "list; check base_url points at the GitHub REST API",
                reason="invalid_response",
            )
        if len(answer.body) > PER_PAGE or len(items) + len(answer.body) > MAX_ITEMS:
            # Every item is kept until the last page: an answer this long would fill
            # the worker's memory, and every tenant's jobs in flight would die with it.
            raise PermanentError(
                f"GET {safe_url}: {len(answer.body)} items on page {page} after {len(items)}, "
                f"over {PER_PAGE} a page or {MAX_ITEMS} in all; check base_url",
                reason="invalid_response",
            )
        for position, raw in enumerate(answer.body):
            try:
                if not isinstance(raw, dict):
                    raise ValidationError(f"a JSON {type(raw).__name__}, expected an object")
                item: dict[str, Any] = schema.load(raw)
            except ValidationError as exc:
                raise PermanentError(
                    f"GET {safe_url}: item {position} is not valid: {format_errors(exc.messages)}",
                    reason="invalid_response",
                ) from None
            items[item["id"]] = item
        next_url = _next_link(answer.headers.get("Link"), base, safe_url)
    return items


def _next_link(link: str | None, base: str, safe_url: str) -> str | None:
    """The rel="next" URL of a Link header, refused unless it is on base_url's server."""
    if not link:
        return None
    for entry in parse_header_links(link):
        if entry.get("rel") == "next" and entry.get("url"):
            target = entry["url"]
            wanted, got = urlsplit(base), urlsplit(target)
            if (got.scheme.lower(), got.netloc.lower()) != (
                wanted.scheme.lower(),
                wanted.netloc.lower(),
            ):
                raise PermanentError(
                    f"GET {safe_url}: the next page {redact_url(target)} is not on "
                    f"{redact_url(base)}; refusing to send the token elsewhere",
                    reason="invalid_response",
                )
            return target
    return None


def _apply(
    session: Session,
    integration: Integration,
    model: type[GithubMember] | type[GithubRepository],
    items: Mapping[int, Mapping[str, Any]],
    *,
    compare: Sequence[str],
) -> Changes:
    """Upsert `items` of one integration and delete its rows not among them."""
    existing = set(
        session.scalars(select(model.github_id).where(model.integration_id == integration.id))
    )
    added = updated = 0
    for github_id, item in items.items():
        values = {
            "tenant_id": integration.tenant_id,
            "integration_id": integration.id,
            "github_id": github_id,
            **{name: item[name] for name in compare},
        }
        if upsert(session, model, values, key=("integration_id", "github_id"), compare=compare):
            if github_id in existing:
                updated += 1
            else:
                added += 1
    gone = sorted(existing - set(items))
    removed = 0
    # In chunks: a statement has a limit on its parameters.
    for start in range(0, len(gone), 1_000):
        chunk = gone[start : start + 1_000]
        result = session.execute(
            delete(model).where(model.integration_id == integration.id, model.github_id.in_(chunk))
        )
        removed += int(getattr(result, "rowcount", 0) or 0)
    return {"added": added, "updated": updated, "removed": removed}
