"""The `github` sync against a fake GitHub (pytest-httpserver on 127.0.0.1) and SQLite."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from cryptography.fernet import Fernet
from pytest_httpserver import HTTPServer
from sqlalchemy import select
from sqlalchemy.orm import Session
from werkzeug import Request, Response

from db.models import GithubMember, GithubRepository, Integration, Tenant
from services import locker
from services.errors import FetchFailed, FetchRefused, PermanentError
from services.http import FetchLimits
from services.integrations import add_integration
from services.integrations.github import sync_github

KEYS = [Fernet.generate_key().decode()]
TOKEN = "ghp_unit_TOKEN_never_shown_0123456789"
LIMITS = FetchLimits(connect_timeout=1.0, read_timeout=1.0, max_bytes=100_000, allow_private=True)


def member(github_id: int, login: str) -> dict[str, Any]:
    """A member as GitHub lists it (with fields Taskyard ignores)."""
    return {"id": github_id, "login": login, "type": "User", "site_admin": False, "node_id": "x"}


def repo(github_id: int, name: str, description: str | None = None) -> dict[str, Any]:
    """A repository as GitHub lists it (with fields Taskyard ignores)."""
    return {
        "id": github_id,
        "name": name,
        "full_name": f"acme/{name}",
        "private": False,
        "archived": False,
        "description": description,
        "default_branch": "main",
        "html_url": f"https://github.example/acme/{name}",
        "stargazers_count": 3,
    }


class FakeGithub:
    """Organisation `acme`: members and repos served `page_size` to a page with Link headers.

    `fail` queues answers (status, headers, body) given before the real ones, per list.
    """

    def __init__(self, server: HTTPServer, token: str, page_size: int = 2) -> None:
        self.server = server
        self.token = token
        self.page_size = page_size
        self.lists: dict[str, list[Any]] = {
            "members": [member(1, "ada"), member(2, "brian"), member(3, "cleo")],
            "repos": [repo(10, "api"), repo(11, "web"), repo(12, "docs"), repo(13, "ops")],
        }
        self.queued: dict[str, list[tuple[int, dict[str, str], str]]] = {
            "members": [],
            "repos": [],
        }
        self.seen_auth: list[str | None] = []
        server.expect_request(re.compile(r"^/orgs/acme/(members|repos)$")).respond_with_handler(
            self.handle
        )

    @property
    def base_url(self) -> str:
        """The base URL an integration is configured with."""
        return self.server.url_for("").rstrip("/")

    def fail(self, which: str, status: int, body: str = "", **headers: str) -> None:
        """Answer the next request for `which` with this instead."""
        self.queued[which].append(
            (status, {k.replace("_", "-"): v for k, v in headers.items()}, body)
        )

    def handle(self, request: Request) -> Response:
        """Serve one page."""
        which = request.path.rsplit("/", 1)[1]
        self.seen_auth.append(request.headers.get("Authorization"))
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return Response('{"message": "Bad credentials"}', status=401)
        if self.queued[which]:
            status, headers, body = self.queued[which].pop(0)
            return Response(body, status=status, headers=headers, mimetype="application/json")
        page = int(request.args.get("page", "1"))
        items = self.lists[which]
        start = (page - 1) * self.page_size
        response = Response(mimetype="application/json")
        response.set_data(json.dumps(items[start : start + self.page_size]))
        if start + self.page_size < len(items):
            url = f"{self.base_url}/orgs/acme/{which}?per_page=100&page={page + 1}"
            response.headers["Link"] = f'<{url}>; rel="next", <{url}>; rel="last"'
        return response


@pytest.fixture
def github(httpserver: HTTPServer) -> FakeGithub:
    """The fake GitHub with its standard organisation."""
    return FakeGithub(httpserver, TOKEN)


@pytest.fixture
def http() -> Iterator[requests.Session]:
    """A requests session, closed after the test."""
    with requests.Session() as session:
        yield session


@pytest.fixture
def integration(sqlite_session: Session, tenant: Tenant, github: FakeGithub) -> Integration:
    """A github integration on the fake server, with its token in the locker."""
    locker.set_secret(sqlite_session, tenant.id, "github.token", TOKEN, secret_keys=KEYS)
    return add_integration(
        sqlite_session,
        tenant.id,
        "github",
        {"org": "acme", "base_url": github.base_url},
        allow_private=True,
    )


def sync(session: Session, integration: Integration, http: requests.Session) -> Any:
    """Run one sync."""
    return sync_github(session, integration, http=http, limits=LIMITS, secret_keys=KEYS)


def rows(session: Session) -> tuple[dict[int, str], dict[int, str]]:
    """Synced logins and repository names by GitHub id."""
    members = {m.github_id: m.login for m in session.scalars(select(GithubMember))}
    repos = {r.github_id: r.name for r in session.scalars(select(GithubRepository))}
    return members, repos


def test_first_sync_reads_every_page(
    sqlite_session: Session, integration: Integration, github: FakeGithub, http: requests.Session
) -> None:
    summary = sync(sqlite_session, integration, http)

    assert summary == {
        "members": {"added": 3, "updated": 0, "removed": 0},
        "repositories": {"added": 4, "updated": 0, "removed": 0},
    }
    assert rows(sqlite_session) == (
        {1: "ada", 2: "brian", 3: "cleo"},
        {10: "api", 11: "web", 12: "docs", 13: "ops"},
    )
    # 2 pages of members and 2 of repos, each with the token.
    assert github.seen_auth == [f"Bearer {TOKEN}"] * 4


def test_second_sync_changes_nothing(
    sqlite_session: Session, integration: Integration, http: requests.Session
) -> None:
    sync(sqlite_session, integration, http)
    stamps = {r.github_id: r.updated_at for r in sqlite_session.scalars(select(GithubRepository))}

    summary = sync(sqlite_session, integration, http)

    assert summary == {
        "members": {"added": 0, "updated": 0, "removed": 0},
        "repositories": {"added": 0, "updated": 0, "removed": 0},
    }
    sqlite_session.expire_all()
    after = {r.github_id: r.updated_at for r in sqlite_session.scalars(select(GithubRepository))}
    assert after == stamps


def test_changes_upstream_are_counted(
    sqlite_session: Session, integration: Integration, github: FakeGithub, http: requests.Session
) -> None:
    sync(sqlite_session, integration, http)
    github.lists["members"] = [member(1, "ada"), member(3, "cleo-renamed"), member(4, "dev")]
    github.lists["repos"] = [repo(10, "api", "now described")]

    summary = sync(sqlite_session, integration, http)

    assert summary == {
        "members": {"added": 1, "updated": 1, "removed": 1},
        "repositories": {"added": 0, "updated": 1, "removed": 3},
    }
    assert rows(sqlite_session) == ({1: "ada", 3: "cleo-renamed", 4: "dev"}, {10: "api"})


def test_failure_on_a_later_page_removes_nothing(
    sqlite_session: Session, integration: Integration, github: FakeGithub, http: requests.Session
) -> None:
    sync(sqlite_session, integration, http)
    github.lists["members"] = [member(1, "ada")]
    github.fail("repos", 502)

    with pytest.raises(FetchFailed, match="502"):
        sync(sqlite_session, integration, http)

    assert set(rows(sqlite_session)[0]) == {1, 2, 3}


def test_429_with_retry_after_is_transient_with_the_wait(
    sqlite_session: Session, integration: Integration, github: FakeGithub, http: requests.Session
) -> None:
    github.fail("members", 429, Retry_After="7")

    with pytest.raises(FetchFailed) as caught:
        sync(sqlite_session, integration, http)

    assert caught.value.retry_after == 7.0
    assert TOKEN not in str(caught.value)


def test_403_rate_limit_waits_until_reset(
    sqlite_session: Session, integration: Integration, github: FakeGithub, http: requests.Session
) -> None:
    reset = int(dt.datetime.now(dt.UTC).timestamp()) + 30
    github.fail("members", 403, X_RateLimit_Remaining="0", X_RateLimit_Reset=str(reset))

    with pytest.raises(FetchFailed, match="rate limiting") as caught:
        sync(sqlite_session, integration, http)

    assert caught.value.retry_after is not None
    assert 25 <= caught.value.retry_after <= 31


def test_403_without_rate_limit_is_permanent(
    sqlite_session: Session, integration: Integration, github: FakeGithub, http: requests.Session
) -> None:
    github.fail("members", 403, '{"message": "Must have admin rights"}', X_RateLimit_Remaining="4")

    with pytest.raises(FetchRefused, match="403"):
        sync(sqlite_session, integration, http)


def test_404_is_permanent_and_clear(
    sqlite_session: Session, integration: Integration, github: FakeGithub, http: requests.Session
) -> None:
    github.fail("members", 404, '{"message": "Not Found"}')

    with pytest.raises(FetchRefused) as caught:
        sync(sqlite_session, integration, http)

    assert "404 Not Found" in str(caught.value)
    assert "/orgs/acme/members" in str(caught.value)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("[{", "is not JSON"),
        ('{"message": "hi"}', "expected a list"),
        ('[{"login": "no-id"}]', "item 0 is not valid: id"),
        ("[42]", "item 0 is not valid"),
    ],
)
def test_malformed_answers_are_permanent(
    sqlite_session: Session,
    integration: Integration,
    github: FakeGithub,
    http: requests.Session,
    body: str,
    expected: str,
) -> None:
    github.fail("repos", 200, body)

    with pytest.raises(PermanentError, match=re.escape(expected)):
        sync(sqlite_session, integration, http)


def test_next_page_on_another_host_is_refused(
    sqlite_session: Session, integration: Integration, github: FakeGithub, http: requests.Session
) -> None:
    github.fail("members", 200, "[]", Link='<http://elsewhere.example/steal?page=2>; rel="next"')

    with pytest.raises(PermanentError, match="refusing to send the token elsewhere"):
        sync(sqlite_session, integration, http)


def test_missing_token_tells_how_to_set_it(
    sqlite_session: Session, tenant: Tenant, github: FakeGithub, http: requests.Session
) -> None:
    integration = add_integration(
        sqlite_session,
        tenant.id,
        "github",
        {"org": "acme", "base_url": github.base_url},
        allow_private=True,
    )

    with pytest.raises(PermanentError) as caught:
        sync(sqlite_session, integration, http)

    assert f"taskyard locker set --tenant {tenant.id} github.token" in str(caught.value)
    assert caught.value.reason == "missing_token"
    assert github.seen_auth == []


def test_wrong_token_is_permanent_without_showing_it(
    sqlite_session: Session, integration: Integration, github: FakeGithub, http: requests.Session
) -> None:
    github.token = "another"

    with pytest.raises(FetchRefused, match="401") as caught:
        sync(sqlite_session, integration, http)

    assert TOKEN not in str(caught.value)


@pytest.mark.parametrize(("page_size", "members", "cap"), [(101, 101, 10_000), (2, 5, 3)])
def test_a_list_too_long_to_keep_in_memory_is_refused_and_changes_nothing(
    sqlite_session: Session,
    integration: Integration,
    github: FakeGithub,
    http: requests.Session,
    monkeypatch: pytest.MonkeyPatch,
    page_size: int,
    members: int,
    cap: int,
) -> None:
    # Given a server answering pages over 100 items, or more items in all than the cap
    monkeypatch.setattr("services.integrations.github.MAX_ITEMS", cap)
    github.page_size = page_size
    github.lists["members"] = [member(n, f"m{n}") for n in range(1, members + 1)]
    # When the integration syncs, then it is refused before it keeps them all
    with pytest.raises(PermanentError, match="over 100 a page or") as caught:
        sync(sqlite_session, integration, http)
    assert caught.value.reason == "invalid_response"
    # And nothing was written
    assert rows(sqlite_session) == ({}, {})
