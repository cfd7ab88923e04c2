"""Fixtures for service tests: an in-memory SQLite database, a tenant, a canned feed."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from requests import PreparedRequest, Response
from requests.adapters import BaseAdapter
from sqlalchemy import create_engine, event
from sqlalchemy.orm import Session
from sqlalchemy.pool import StaticPool

from db.base import Base
from db.models import Tenant
from services.tenants import create_tenant


@pytest.fixture
def sqlite_session() -> Iterator[Session]:
    """A session on a fresh in-memory SQLite database with every table created."""
    # StaticPool keeps the one connection, and with it the in-memory database.
    engine = create_engine(
        "sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False}
    )

    @event.listens_for(engine, "connect")
    def _foreign_keys_on(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    Base.metadata.create_all(engine)
    session = Session(engine)
    try:
        yield session
    finally:
        session.close()
        engine.dispose()


@pytest.fixture
def tenant(sqlite_session: Session) -> Tenant:
    """An active tenant, flushed."""
    return create_tenant(sqlite_session, "acme")


class CannedFeed(BaseAdapter):
    """A requests transport that answers every request with one canned JSON body."""

    URL = "https://feeds.example/feed.json"

    def __init__(self) -> None:
        super().__init__()
        self.body = b"[]"
        self.status = 200
        self.urls: list[str] = []

    def serve(self, payload: Any, status: int = 200) -> str:
        """Answer with `payload` as JSON from now on; returns the URL to fetch."""
        self.body = json.dumps(payload).encode()
        self.status = status
        return self.URL

    def send(self, request: PreparedRequest, *args: Any, **kwargs: Any) -> Response:
        """Answer `request` with the canned body."""
        self.urls.append(str(request.url))
        response = Response()
        response.status_code = self.status
        response.reason = "OK" if self.status < 400 else "Error"
        response.headers["Content-Type"] = "application/json"
        response.raw = io.BytesIO(self.body)
        response.url = str(request.url)
        response.request = request
        return response

    def close(self) -> None:
        """Nothing to release."""


@pytest.fixture
def feed() -> CannedFeed:
    """A canned feed at `CannedFeed.URL`; use with the `http` fixture."""
    return CannedFeed()


@pytest.fixture
def http(feed: CannedFeed) -> Iterator[requests.Session]:
    """A requests session whose every request reaches the canned feed, never the network."""
    with requests.Session() as session:
        session.mount("https://", feed)
        session.mount("http://", feed)
        yield session
